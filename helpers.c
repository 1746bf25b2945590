// SPDX-License-Identifier: GPL-2.0
/*
 * Out-of-line copies of the static inline kernel functions rust_ksm calls.
 * Nothing but one-line wrappers belongs here: all logic lives in Rust.
 */
#include <linux/module.h>
#include <trace/events/ksm.h>
#include "rust_ksm_bindings.h"

MODULE_IMPORT_NS(KSM_ENGINE_NS);

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

void rust_ksm_folio_get(struct folio *folio)
{
	folio_get(folio);
}

void rust_ksm_folio_put(struct folio *folio)
{
	folio_put(folio);
}

bool rust_ksm_folio_trylock(struct folio *folio)
{
	return folio_trylock(folio);
}

void rust_ksm_folio_lock(struct folio *folio)
{
	folio_lock(folio);
}

bool rust_ksm_folio_test_large(struct folio *folio)
{
	return folio_test_large(folio);
}

bool rust_ksm_folio_test_ksm(struct folio *folio)
{
	return folio_test_ksm(folio);
}

bool rust_ksm_folio_test_swapcache(struct folio *folio)
{
	return folio_test_swapcache(folio);
}

bool rust_ksm_folio_test_dirty(struct folio *folio)
{
	return folio_test_dirty(folio);
}

bool rust_ksm_folio_mapped(struct folio *folio)
{
	return folio_mapped(folio);
}

int rust_ksm_folio_mapcount(struct folio *folio)
{
	return folio_mapcount(folio);
}

int rust_ksm_folio_ref_count(struct folio *folio)
{
	return folio_ref_count(folio);
}

unsigned long rust_ksm_folio_pfn(struct folio *folio)
{
	return folio_pfn(folio);
}

unsigned long rust_ksm_page_to_pfn(struct page *page)
{
	return page_to_pfn(page);
}

struct folio *rust_ksm_pfn_folio(unsigned long pfn)
{
	return pfn_folio(pfn);
}

struct page *rust_ksm_folio_page(struct folio *folio)
{
	return folio_page(folio, 0);
}

void *rust_ksm_folio_mapping(struct folio *folio)
{
	return READ_ONCE(folio->mapping);
}

void rust_ksm_folio_set_mapping(struct folio *folio, void *mapping)
{
	WRITE_ONCE(folio->mapping, mapping);
}

int rust_ksm_split_huge_page(struct page *page)
{
	return split_huge_page(page);
}

bool rust_ksm_page_anon_exclusive(struct page *page)
{
	return PageAnonExclusive(page);
}

int rust_ksm_folio_try_share_anon_rmap_pte(struct folio *folio,
					   struct page *page)
{
	return folio_try_share_anon_rmap_pte(folio, page);
}

void *rust_ksm_kmap_local_page(struct page *page)
{
	return kmap_local_page(page);
}

void rust_ksm_kunmap_local(void *addr)
{
	kunmap_local(addr);
}

void rust_ksm_pvmw_init(struct page_vma_mapped_walk *pvmw, struct folio *folio,
			struct vm_area_struct *vma, unsigned long addr)
{
	DEFINE_FOLIO_VMA_WALK(walk, folio, vma, addr, 0);

	*pvmw = walk;
}

void rust_ksm_pvmw_done(struct page_vma_mapped_walk *pvmw)
{
	page_vma_mapped_walk_done(pvmw);
}

void rust_ksm_mmu_notifier_clear_start(struct mmu_notifier_range *range,
				       struct mm_struct *mm,
				       unsigned long start, unsigned long end)
{
	mmu_notifier_range_init(range, MMU_NOTIFY_CLEAR, 0, mm, start, end);
	mmu_notifier_invalidate_range_start(range);
}

void rust_ksm_mmu_notifier_end(struct mmu_notifier_range *range)
{
	mmu_notifier_invalidate_range_end(range);
}

bool rust_ksm_pte_write(pte_t pte)
{
	return pte_write(pte);
}

bool rust_ksm_pte_dirty(pte_t pte)
{
	return pte_dirty(pte);
}

bool rust_ksm_pte_same(pte_t a, pte_t b)
{
	return pte_same(a, b);
}

pte_t rust_ksm_pte_mkclean(pte_t pte)
{
	return pte_mkclean(pte);
}

pte_t rust_ksm_pte_wrprotect(pte_t pte)
{
	return pte_wrprotect(pte);
}

pte_t rust_ksm_mk_pte(struct page *page, struct vm_area_struct *vma)
{
	return mk_pte(page, vma->vm_page_prot);
}

void rust_ksm_set_pte_at(struct mm_struct *mm, unsigned long addr, pte_t *ptep,
			 pte_t pte)
{
	set_pte_at(mm, addr, ptep, pte);
}

void rust_ksm_flush_cache_page(struct vm_area_struct *vma, unsigned long addr,
			       unsigned long pfn)
{
	flush_cache_page(vma, addr, pfn);
}

unsigned long rust_ksm_pte_pfn(pte_t pte)
{
	return pte_pfn(pte);
}

int rust_ksm_folio_nid(struct folio *folio)
{
	return folio_nid(folio);
}

unsigned int rust_ksm_nr_node_ids(void)
{
	return nr_node_ids;
}

bool rust_ksm_mm_tlb_flush_pending(struct mm_struct *mm)
{
	return mm_tlb_flush_pending(mm);
}

/* mm/rmap.c's mm_find_pmd(), which is not exported. */
pmd_t *rust_ksm_mm_find_pmd(struct mm_struct *mm, unsigned long addr)
{
	pgd_t *pgd = pgd_offset(mm, addr);
	p4d_t *p4d;
	pud_t *pud;

	if (!pgd_present(*pgd))
		return NULL;
	p4d = p4d_offset(pgd, addr);
	if (!p4d_present(*p4d))
		return NULL;
	pud = pud_offset(p4d, addr);
	if (!pud_present(*pud))
		return NULL;
	return pmd_offset(pud, addr);
}

void rust_ksm_folio_walk_end(struct folio_walk *fw, struct vm_area_struct *vma)
{
	folio_walk_end(fw, vma);
}

struct vm_area_struct *rust_ksm_vma_lookup(struct mm_struct *mm,
					   unsigned long addr)
{
	return vma_lookup(mm, addr);
}

void rust_ksm_get_anon_vma(struct anon_vma *anon_vma)
{
	get_anon_vma(anon_vma);
}

void rust_ksm_put_anon_vma(struct anon_vma *anon_vma)
{
	put_anon_vma(anon_vma);
}

bool rust_ksm_folio_try_get(struct folio *folio)
{
	return folio_try_get(folio);
}

void rust_ksm_smp_rmb(void)
{
	/* Pairs with the smp_wmb() below: see the folio_migrate hook. */
	smp_rmb();
}

void rust_ksm_smp_wmb(void)
{
	/* Orders a stable node's new pfn before the old folio's new mapping. */
	smp_wmb();
}

void rust_ksm_rb_link_node(struct rb_node *node, struct rb_node *parent,
			   struct rb_node **link)
{
	rb_link_node(node, parent, link);
}

unsigned long rust_ksm_linear_page_index(struct vm_area_struct *vma,
					 unsigned long addr)
{
	return linear_page_index(vma, addr);
}

void rust_ksm_anon_vma_lock_read(struct anon_vma *anon_vma)
{
	anon_vma_lock_read(anon_vma);
}

bool rust_ksm_anon_vma_trylock_read(struct anon_vma *anon_vma)
{
	return anon_vma_trylock_read(anon_vma);
}

void rust_ksm_anon_vma_unlock_read(struct anon_vma *anon_vma)
{
	anon_vma_unlock_read(anon_vma);
}

void rust_ksm_vma_start_write(struct vm_area_struct *vma)
{
	vma_start_write(vma);
}

unsigned long rust_ksm_vma_start(const struct vm_area_struct *vma)
{
	return vma->vm_start;
}

unsigned long rust_ksm_vma_end(const struct vm_area_struct *vma)
{
	return vma->vm_end;
}

/* KSM zero pages (use_zero_pages), as mm/ksm.c's replace_page() makes them. */
struct page *rust_ksm_zero_page(unsigned long addr)
{
	return ZERO_PAGE(addr);
}

/* The dirty bit tells a KSM-placed zero page from a plain one. */
pte_t rust_ksm_mk_ksm_zero_pte(unsigned long addr, struct vm_area_struct *vma)
{
	return pte_mkdirty(pte_mkspecial(pfn_pte(my_zero_pfn(addr),
						 vma->vm_page_prot)));
}

bool rust_ksm_is_ksm_zero_pte(pte_t pte)
{
	return is_ksm_zero_pte(pte);
}

void rust_ksm_map_zero_page(struct mm_struct *mm)
{
	ksm_map_zero_page(mm);
}

void rust_ksm_dec_anon_pages(struct mm_struct *mm)
{
	dec_mm_counter(mm, MM_ANONPAGES);
}

long rust_ksm_zero_pages(void)
{
	return atomic_long_read(&ksm_zero_pages);
}

long rust_ksm_mm_zero_pages(struct mm_struct *mm)
{
	return mm_ksm_zero_pages(mm);
}

/* A migration entry (the page is locked and referenced by migration). */
bool rust_ksm_is_migration_pte(pte_t pte)
{
	return !pte_none(pte) && !pte_present(pte) &&
	       is_migration_entry(pte_to_swp_entry(pte));
}

struct folio *rust_ksm_migration_pte_folio(pte_t pte)
{
	return pfn_swap_entry_folio(pte_to_swp_entry(pte));
}

/* An engine invariant broke: report it once, loudly, and go on. */
void rust_ksm_warn_once(const char *msg)
{
	WARN_ONCE(1, "rust_ksm: %s\n", msg);
}

/*
 * The ksm:* tracepoints of include/trace/events/ksm.h, fired by rust_ksm at
 * the points mm/ksm.c fires them (the enabling patch exports them).
 */
void rust_ksm_trace_start_scan(int seq, u32 rmap_entries)
{
	trace_ksm_start_scan(seq, rmap_entries);
}

void rust_ksm_trace_stop_scan(int seq, u32 rmap_entries)
{
	trace_ksm_stop_scan(seq, rmap_entries);
}

void rust_ksm_trace_merge_one_page(unsigned long pfn, void *rmap_item,
				   void *mm, int err)
{
	trace_ksm_merge_one_page(pfn, rmap_item, mm, err);
}

void rust_ksm_trace_merge_with_ksm_page(void *ksm_page, unsigned long pfn,
					void *rmap_item, void *mm, int err)
{
	trace_ksm_merge_with_ksm_page(ksm_page, pfn, rmap_item, mm, err);
}

void rust_ksm_trace_remove_ksm_page(unsigned long pfn)
{
	trace_ksm_remove_ksm_page(pfn);
}

void rust_ksm_trace_remove_rmap_item(unsigned long pfn, void *rmap_item,
				     void *mm)
{
	trace_ksm_remove_rmap_item(pfn, rmap_item, mm);
}

void rust_ksm_trace_advisor(s64 scan_time, unsigned long pages_to_scan,
			    unsigned int cpu_percent)
{
	trace_ksm_advisor(scan_time, pages_to_scan, cpu_percent);
}

/*
 * Merge domains: the uid of an mm's owner, and the id of its owner's cgroup
 * (v2) or of that cgroup's ancestor at @depth.  The owner (mm->owner, kept
 * with CONFIG_MEMCG) is the task whose memory it is; RCU keeps it and its
 * credentials and css_set readable.  RUST_KSM_NO_DOMAIN if there is none
 * (the mm is exiting, or the kernel keeps no owner).
 */
u64 rust_ksm_mm_owner_uid(struct mm_struct *mm)
{
	u64 uid = RUST_KSM_NO_DOMAIN;
#ifdef CONFIG_MEMCG
	struct task_struct *owner;

	rcu_read_lock();
	owner = rcu_dereference(mm->owner);
	if (owner)
		uid = from_kuid_munged(&init_user_ns, task_uid(owner));
	rcu_read_unlock();
#endif
	return uid;
}

/*
 * RUST_KSM_DOMAIN_FORKING while the owner is a child that fork has not put
 * in its cgroup yet: its mm reaches KSM at the end of dup_mmap(), but the
 * child joins its parent's cgroup (or clone3's) only in cgroup_post_fork();
 * until then it sits in init_css_set, the root cgroup's.  TASK_NEW is set
 * by sched_fork() before the mm is copied and cleared by
 * wake_up_new_task() after cgroup_post_fork(); init_task never leaves
 * init_css_set.  (A child of a root-cgroup parent stays FORKING until it
 * is woken: it lands in the root's domain either way.)
 */
u64 rust_ksm_mm_owner_cgroup_id(struct mm_struct *mm, unsigned int depth)
{
	u64 id = RUST_KSM_NO_DOMAIN;
#if defined(CONFIG_MEMCG) && defined(CONFIG_CGROUPS)
	struct task_struct *owner;

	rcu_read_lock();
	owner = rcu_dereference(mm->owner);
	if (owner && (READ_ONCE(owner->__state) & TASK_NEW) &&
	    task_css_set(owner) == task_css_set(&init_task)) {
		id = RUST_KSM_DOMAIN_FORKING;
	} else if (owner) {
		struct cgroup *cgrp = task_dfl_cgroup(owner);

		if (cgrp->level > depth)
			cgrp = cgroup_ancestor(cgrp, depth);
		id = cgroup_id(cgrp);
	}
	rcu_read_unlock();
#endif
	return id;
}

/*
 * Which task owns @mm now, as an identity only (never dereferenced): the
 * engine watches for the exit of the owners it homed mms by, because
 * mm_update_next_owner() hands an mm to another task, maybe in another
 * cgroup, and tells nobody.  0 if there is none.
 */
unsigned long rust_ksm_mm_owner(struct mm_struct *mm)
{
#ifdef CONFIG_MEMCG
	return (unsigned long)rcu_access_pointer(mm->owner);
#else
	return 0;
#endif
}

/*
 * Tracepoints as event sources (domain_events.rs): a tracepoint's name, and
 * the grace period after unregistering a probe.
 */
const char *rust_ksm_tracepoint_name(struct tracepoint *tp)
{
	return tp->name;
}

void rust_ksm_tracepoint_synchronize_unregister(void)
{
	tracepoint_synchronize_unregister();
}
