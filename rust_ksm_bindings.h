/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel API rust_ksm needs beyond kernel::bindings.  Kbuild runs
 * bindgen on this header with an allowlist (see Kbuild); types that
 * kernel::bindings already has are reused, not regenerated.
 */
#include <linux/cgroup.h>
#include <linux/cred.h>
#include <linux/debugfs.h>
#include <linux/freezer.h>
#include <linux/highmem.h>
#include <linux/huge_mm.h>
#include <linux/ksm.h>
#include <linux/ksm_engine.h>
#include <linux/kthread.h>
#include <linux/memory.h>
#include <linux/mm_inline.h>
#include <linux/mmu_notifier.h>
#include <linux/mm.h>
#include <linux/pagewalk.h>
#include <linux/rmap.h>
#include <linux/sched/mm.h>
#include <linux/swap.h>
#include <linux/swapops.h>
#include <linux/tracepoint.h>
#include <linux/xxhash.h>

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

/* Merging: folios. */
void rust_ksm_folio_get(struct folio *folio);
void rust_ksm_folio_put(struct folio *folio);
bool rust_ksm_folio_trylock(struct folio *folio);
void rust_ksm_folio_lock(struct folio *folio);
bool rust_ksm_folio_test_large(struct folio *folio);
bool rust_ksm_folio_test_ksm(struct folio *folio);
bool rust_ksm_folio_test_swapcache(struct folio *folio);
bool rust_ksm_folio_test_dirty(struct folio *folio);
bool rust_ksm_folio_mapped(struct folio *folio);
int rust_ksm_folio_mapcount(struct folio *folio);
int rust_ksm_folio_ref_count(struct folio *folio);
unsigned long rust_ksm_folio_pfn(struct folio *folio);
unsigned long rust_ksm_page_to_pfn(struct page *page);
struct folio *rust_ksm_pfn_folio(unsigned long pfn);
struct page *rust_ksm_folio_page(struct folio *folio);
void *rust_ksm_folio_mapping(struct folio *folio);
void rust_ksm_folio_set_mapping(struct folio *folio, void *mapping);
int rust_ksm_split_huge_page(struct page *page);
bool rust_ksm_page_anon_exclusive(struct page *page);
int rust_ksm_folio_try_share_anon_rmap_pte(struct folio *folio,
					   struct page *page);
void *rust_ksm_kmap_local_page(struct page *page);
void rust_ksm_kunmap_local(void *addr);

/* Merging: page tables. */
void rust_ksm_pvmw_init(struct page_vma_mapped_walk *pvmw, struct folio *folio,
			struct vm_area_struct *vma, unsigned long addr);
void rust_ksm_pvmw_done(struct page_vma_mapped_walk *pvmw);
void rust_ksm_mmu_notifier_clear_start(struct mmu_notifier_range *range,
				       struct mm_struct *mm,
				       unsigned long start, unsigned long end);
void rust_ksm_mmu_notifier_end(struct mmu_notifier_range *range);
bool rust_ksm_pte_write(pte_t pte);
bool rust_ksm_pte_dirty(pte_t pte);
bool rust_ksm_pte_same(pte_t a, pte_t b);
pte_t rust_ksm_pte_mkclean(pte_t pte);
pte_t rust_ksm_pte_wrprotect(pte_t pte);
pte_t rust_ksm_mk_pte(struct page *page, struct vm_area_struct *vma);
void rust_ksm_set_pte_at(struct mm_struct *mm, unsigned long addr, pte_t *ptep,
			 pte_t pte);
void rust_ksm_flush_cache_page(struct vm_area_struct *vma, unsigned long addr,
			       unsigned long pfn);
unsigned long rust_ksm_pte_pfn(pte_t pte);
int rust_ksm_folio_nid(struct folio *folio);
unsigned int rust_ksm_nr_node_ids(void);
bool rust_ksm_mm_tlb_flush_pending(struct mm_struct *mm);
pmd_t *rust_ksm_mm_find_pmd(struct mm_struct *mm, unsigned long addr);
void rust_ksm_folio_walk_end(struct folio_walk *fw, struct vm_area_struct *vma);

/* KSM zero pages (use_zero_pages). */
struct page *rust_ksm_zero_page(unsigned long addr);
pte_t rust_ksm_mk_ksm_zero_pte(unsigned long addr, struct vm_area_struct *vma);
bool rust_ksm_is_ksm_zero_pte(pte_t pte);
bool rust_ksm_is_migration_pte(pte_t pte);
struct folio *rust_ksm_migration_pte_folio(pte_t pte);
void rust_ksm_warn_once(const char *msg);
void rust_ksm_map_zero_page(struct mm_struct *mm);
void rust_ksm_dec_anon_pages(struct mm_struct *mm);
long rust_ksm_zero_pages(void);
long rust_ksm_mm_zero_pages(struct mm_struct *mm);

/* Merging: VMAs and anon_vmas. */
struct vm_area_struct *rust_ksm_vma_lookup(struct mm_struct *mm,
					   unsigned long addr);
void rust_ksm_get_anon_vma(struct anon_vma *anon_vma);
void rust_ksm_put_anon_vma(struct anon_vma *anon_vma);
bool rust_ksm_folio_try_get(struct folio *folio);
void rust_ksm_smp_rmb(void);
void rust_ksm_smp_wmb(void);
void rust_ksm_rb_link_node(struct rb_node *node, struct rb_node *parent,
			   struct rb_node **link);
unsigned long rust_ksm_linear_page_index(struct vm_area_struct *vma,
					 unsigned long addr);
void rust_ksm_anon_vma_lock_read(struct anon_vma *anon_vma);
bool rust_ksm_anon_vma_trylock_read(struct anon_vma *anon_vma);
void rust_ksm_anon_vma_unlock_read(struct anon_vma *anon_vma);
void rust_ksm_vma_start_write(struct vm_area_struct *vma);
unsigned long rust_ksm_vma_start(const struct vm_area_struct *vma);
unsigned long rust_ksm_vma_end(const struct vm_area_struct *vma);

/* helpers.c: the ksm:* tracepoints. */
void rust_ksm_trace_start_scan(int seq, u32 rmap_entries);
void rust_ksm_trace_stop_scan(int seq, u32 rmap_entries);
void rust_ksm_trace_merge_one_page(unsigned long pfn, void *rmap_item,
				   void *mm, int err);
void rust_ksm_trace_merge_with_ksm_page(void *ksm_page, unsigned long pfn,
					void *rmap_item, void *mm, int err);
void rust_ksm_trace_remove_ksm_page(unsigned long pfn);
void rust_ksm_trace_remove_rmap_item(unsigned long pfn, void *rmap_item,
				     void *mm);
void rust_ksm_trace_advisor(s64 scan_time, unsigned long pages_to_scan,
			    unsigned int cpu_percent);

/* helpers.c: merge domains (the owner of an mm, its uid and cgroup). */
#define RUST_KSM_NO_DOMAIN 0xffffffffffffffffULL
#define RUST_KSM_DOMAIN_FORKING 0xfffffffffffffffeULL
u64 rust_ksm_mm_owner_uid(struct mm_struct *mm);
u64 rust_ksm_mm_owner_cgroup_id(struct mm_struct *mm, unsigned int depth);
unsigned long rust_ksm_mm_owner(struct mm_struct *mm);

/* helpers.c: tracepoints as event sources (domain_events.rs). */
const char *rust_ksm_tracepoint_name(struct tracepoint *tp);
void rust_ksm_tracepoint_synchronize_unregister(void);
