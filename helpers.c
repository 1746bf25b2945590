// SPDX-License-Identifier: GPL-2.0
/*
 * Out-of-line copies of the static inline kernel functions rust_ksm calls.
 * Nothing but one-line wrappers belongs here: all logic lives in Rust.
 */
#include <linux/module.h>
#include "rust_ksm_bindings.h"

MODULE_IMPORT_NS(KSM_ENGINE);

void rust_ksm_mmgrab(struct mm_struct *mm)
{
	mmgrab(mm);
}

void rust_ksm_mmdrop(struct mm_struct *mm)
{
	mmdrop(mm);
}

bool rust_ksm_mmget_not_zero(struct mm_struct *mm)
{
	return mmget_not_zero(mm);
}

/* mm/ksm.c's ksm_test_exit(): exit_mmap() may be tearing the mm down. */
bool rust_ksm_mm_exiting(struct mm_struct *mm)
{
	return atomic_read(&mm->mm_users) == 0;
}

void rust_ksm_mmap_read_lock(struct mm_struct *mm)
{
	mmap_read_lock(mm);
}

void rust_ksm_mmap_read_unlock(struct mm_struct *mm)
{
	mmap_read_unlock(mm);
}

unsigned long rust_ksm_vm_flags(const struct vm_area_struct *vma)
{
	return vma->vm_flags;
}

bool rust_ksm_try_to_freeze(void)
{
	return try_to_freeze();
}

void rust_ksm_cond_resched(void)
{
	cond_resched();
}

pmd_t rust_ksm_pmdp_get_lockless(pmd_t *pmdp)
{
	return pmdp_get_lockless(pmdp);
}

pmd_t rust_ksm_pmdp_get(pmd_t *pmdp)
{
	return pmdp_get(pmdp);
}

bool rust_ksm_pmd_present(pmd_t pmd)
{
	return pmd_present(pmd);
}

bool rust_ksm_pmd_leaf(pmd_t pmd)
{
	return pmd_leaf(pmd);
}

spinlock_t *rust_ksm_pmd_lock(struct mm_struct *mm, pmd_t *pmd)
{
	return pmd_lock(mm, pmd);
}

pte_t *rust_ksm_pte_offset_map_lock(struct mm_struct *mm, pmd_t *pmd,
				    unsigned long addr, spinlock_t **ptlp)
{
	return pte_offset_map_lock(mm, pmd, addr, ptlp);
}

void rust_ksm_pte_unmap_unlock(pte_t *pte, spinlock_t *ptl)
{
	pte_unmap_unlock(pte, ptl);
}

pte_t rust_ksm_ptep_get(pte_t *ptep)
{
	return ptep_get(ptep);
}

bool rust_ksm_pte_present(pte_t pte)
{
	return pte_present(pte);
}

struct folio *rust_ksm_page_folio(struct page *page)
{
	return page_folio(page);
}

bool rust_ksm_folio_test_anon(struct folio *folio)
{
	return folio_test_anon(folio);
}

bool rust_ksm_folio_is_zone_device(struct folio *folio)
{
	return folio_is_zone_device(folio);
}
