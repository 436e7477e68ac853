/**
 * The model's SPTE: the flag bits of one entry of a TDP page table, after arch/x86/kvm/mmu/spte.h.
 *
 * A hardware SPTE is one u64 holding the pfn, permission bits, KVM's software bits and (for a
 * cached MMIO SPTE) the memslot generation. The model splits it in two typed-array columns (see
 * the layout in tdp_mmu.ts): an Int32 value (child table index, base pfn, or MMIO generation) and
 * the 8 flag bits below. What it simplifies: there is one permission bit (WRITABLE; reads are
 * always allowed on a present SPTE, no NX or user bits), no memory type, no access tracking by
 * clearing the present bit (ACCESSED is a plain bit), no "frozen" SPTE (mmu_lock is not
 * contended in a single-threaded model), and MMIO SPTEs are recognised by a bit of their own
 * rather than by a reserved-bit pattern.
 *
 * Flag byte (bit 7 .. bit 0):
 *
 *   7   6      5     4      3         2             1         0
 *   -   LARGE  MMIO  DIRTY  ACCESSED  HOST_WRITABLE WRITABLE  PRESENT
 *
 * A flag byte of 0 is an empty (non-present) entry. PRESENT without LARGE above level 1 is a
 * non-leaf entry (the value is a child table index); PRESENT with LARGE (level 2 or 3), or
 * PRESENT at level 1, is a leaf (the value is the block's base pfn). MMIO (never with PRESENT)
 * is a cached MMIO SPTE at level 1 (the value is the generation it was created under).
 */

/**
 * Bit 0: the SPTE maps something (`is_shadow_present_pte`). On a non-leaf entry it means "points
 * to a child table"; on a leaf, "maps a pfn". Never set together with SPTE_MMIO.
 */
export const SPTE_PRESENT = 0x01;

/**
 * Bit 1: the guest may write through this leaf (PT_WRITABLE_MASK). Cleared by write protection
 * for dirty logging (`writeProtectRange`), so the next guest write faults and is logged.
 */
export const SPTE_WRITABLE = 0x02;

/**
 * Bit 2: the pfn was writable on the host when the leaf was installed
 * (shadow_host_writable_mask). Dirty-logging write protection clears WRITABLE but keeps this,
 * so the fault path can restore WRITABLE without re-resolving the pfn (KVM's fast page fault,
 * `is_mmu_writable_spte`). A leaf without it must never become WRITABLE.
 */
export const SPTE_HOST_WRITABLE = 0x04;

/** Bit 3: the guest accessed the leaf since the bit was last cleared (shadow_accessed_mask). */
export const SPTE_ACCESSED = 0x08;

/**
 * Bit 4: the guest wrote through the leaf (shadow_dirty_mask). When the leaf is zapped, KVM
 * transfers this to the page (`kvm_set_pfn_dirty`); the zap callbacks of TdpMmu receive the flags
 * before the leaf goes so the model's caller can do the same.
 */
export const SPTE_DIRTY = 0x10;

/**
 * Bit 5: a cached MMIO SPTE: the gfn has no memslot, so accesses exit to userspace
 * (RO-2) without another walk of the memslots; the entry's value is the memslot generation it was
 * created under, and it is stale once the generation moves on (a memslot change, MR-20). Only at
 * level 1; never PRESENT.
 */
export const SPTE_MMIO = 0x20;

/**
 * Bit 6: the leaf maps a huge block (PT_PAGE_SIZE_MASK, `is_large_pte`): set on leaves at level
 * 2 (2 MiB) and 3 (1 GiB), never at level 1. Maintained by TdpMmu, not by callers.
 */
export const SPTE_LARGE = 0x40;

/** Bits a caller may pass in `flags` when installing a leaf, or set/clear on one afterwards. */
export const SPTE_LEAF_FLAGS_MASK = SPTE_WRITABLE | SPTE_HOST_WRITABLE | SPTE_ACCESSED | SPTE_DIRTY;

/** Entries per table: 4096-byte table / 8-byte SPTE (SPTE_ENT_PER_PAGE). */
export const SPTE_ENT_PER_PAGE = 512;

/** Bits of gfn consumed per level (SPTE_LEVEL_BITS). */
export const SPTE_LEVEL_BITS = 9;

/** `is_shadow_present_pte`: the entry maps a pfn or points to a table. */
export const isShadowPresent = (flags: number): boolean => (flags & SPTE_PRESENT) !== 0;

/** `is_mmio_spte`: a cached MMIO SPTE. */
export const isMmioSpte = (flags: number): boolean => (flags & SPTE_MMIO) !== 0;

/** `is_last_spte`: a present entry at `level` is a leaf (maps a pfn) rather than a table pointer. */
export const isLastSpte = (flags: number, level: number): boolean =>
  (flags & SPTE_PRESENT) !== 0 && (level === 1 || (flags & SPTE_LARGE) !== 0);

/** `is_writable_pte`: the guest may write through the leaf now. */
export const isWritableSpte = (flags: number): boolean => (flags & SPTE_WRITABLE) !== 0;

/**
 * `is_mmu_writable_spte`: the leaf may be made writable again without resolving the pfn
 * (write-protected only for dirty logging).
 */
export const isMmuWritableSpte = (flags: number): boolean => (flags & SPTE_HOST_WRITABLE) !== 0;

/** `is_dirty_spte`. */
export const isDirtySpte = (flags: number): boolean => (flags & SPTE_DIRTY) !== 0;

/**
 * A flag byte as text for traces and test messages: `"P W HW A D"` (present, writable,
 * host-writable, accessed, dirty), `"L"` for a huge leaf, `"MMIO"`, or `"-"` for an empty entry.
 */
export function describeSpteFlags(flags: number): string {
  if (flags === 0) return '-';
  const parts: string[] = [];
  if (flags & SPTE_MMIO) parts.push('MMIO');
  if (flags & SPTE_PRESENT) parts.push('P');
  if (flags & SPTE_WRITABLE) parts.push('W');
  if (flags & SPTE_HOST_WRITABLE) parts.push('HW');
  if (flags & SPTE_ACCESSED) parts.push('A');
  if (flags & SPTE_DIRTY) parts.push('D');
  if (flags & SPTE_LARGE) parts.push('L');
  if (flags & 0x80) parts.push('?80');
  return parts.join(' ');
}
