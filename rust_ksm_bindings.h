/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel API rust_ksm needs beyond kernel::bindings.  Kbuild runs
 * bindgen on this header with an allowlist (see Kbuild); types that
 * kernel::bindings already has are reused, not regenerated.
 */
#include <linux/freezer.h>
#include <linux/ksm_engine.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/pagewalk.h>
#include <linux/rmap.h>
#include <linux/sched/mm.h>

/* helpers.c: out-of-line copies of static inline kernel functions. */
void rust_ksm_mmgrab(struct mm_struct *mm);
void rust_ksm_mmdrop(struct mm_struct *mm);
bool rust_ksm_mmget_not_zero(struct mm_struct *mm);
bool rust_ksm_mm_exiting(struct mm_struct *mm);
void rust_ksm_mmap_read_lock(struct mm_struct *mm);
void rust_ksm_mmap_read_unlock(struct mm_struct *mm);
unsigned long rust_ksm_vm_flags(const struct vm_area_struct *vma);
bool rust_ksm_try_to_freeze(void);
void rust_ksm_cond_resched(void);

pmd_t rust_ksm_pmdp_get_lockless(pmd_t *pmdp);
pmd_t rust_ksm_pmdp_get(pmd_t *pmdp);
bool rust_ksm_pmd_present(pmd_t pmd);
bool rust_ksm_pmd_leaf(pmd_t pmd);
spinlock_t *rust_ksm_pmd_lock(struct mm_struct *mm, pmd_t *pmd);
pte_t *rust_ksm_pte_offset_map_lock(struct mm_struct *mm, pmd_t *pmd,
				    unsigned long addr, spinlock_t **ptlp);
void rust_ksm_pte_unmap_unlock(pte_t *pte, spinlock_t *ptl);
pte_t rust_ksm_ptep_get(pte_t *ptep);
bool rust_ksm_pte_present(pte_t pte);
struct folio *rust_ksm_page_folio(struct page *page);
bool rust_ksm_folio_test_anon(struct folio *folio);
bool rust_ksm_folio_is_zone_device(struct folio *folio);
