/**
 * Address and page-number types, and their only conversions.
 *
 * Every address or page number in the model is a plain `number` (exact up to 2^53, which covers
 * any gpa of a 52-bit guest physical address space and any hva of a 57-bit user address space),
 * branded so that a Gfn cannot be passed where a Pfn is expected — the TypeScript analogue of
 * vm-memory's `GuestAddress` vs `MemoryRegionAddress`. Values can exceed 2^31, so no bitwise
 * operator may touch them: shifts are written as multiplications and `Math.floor` divisions.
 *
 * Brands are erased at run time; constructing one (`asGfn(n)`) is a checked cast that throws a
 * TypeError for a value that is not a non-negative safe integer.
 */

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

/** Guest frame number: guest physical address >> 12. */
export type Gfn = Brand<number, 'Gfn'>;
/** Guest physical address, in bytes. */
export type Gpa = Brand<number, 'Gpa'>;
/** Host (process) virtual address, in bytes. */
export type Hva = Brand<number, 'Hva'>;
/** Host physical frame number: an index into the host page allocator. */
export type Pfn = Brand<number, 'Pfn'>;
/** Page offset within a file (page cache index). */
export type PgOff = Brand<number, 'PgOff'>;

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
/** 2^PAGE_SHIFT as a float factor: `x * PAGE_SIZE` and `Math.floor(x / PAGE_SIZE)` replace shifts. */
const PAGE = PAGE_SIZE;

/** Pages per mapping level: level 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB (KVM_PAGES_PER_HPAGE). */
export const PG_LEVEL_4K = 1;
export const PG_LEVEL_2M = 2;
export const PG_LEVEL_1G = 3;
export type PgLevel = 1 | 2 | 3;
export function pagesPerLevel(level: PgLevel | 4): number {
  return level === 1 ? 1 : level === 2 ? 512 : level === 3 ? 262144 : 134217728;
}

function check(n: number, what: string): number {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new TypeError(`${what} ${String(n)} is not a non-negative safe integer`);
  }
  return n;
}

export const asGfn = (n: number): Gfn => check(n, 'gfn') as Gfn;
export const asGpa = (n: number): Gpa => check(n, 'gpa') as Gpa;
export const asHva = (n: number): Hva => check(n, 'hva') as Hva;
export const asPfn = (n: number): Pfn => check(n, 'pfn') as Pfn;
export const asPgOff = (n: number): PgOff => check(n, 'pgoff') as PgOff;

/** gpa >> PAGE_SHIFT */
export const gpaToGfn = (gpa: Gpa): Gfn => Math.floor(gpa / PAGE) as Gfn;
/** gfn << PAGE_SHIFT */
export const gfnToGpa = (gfn: Gfn): Gpa => (gfn * PAGE) as Gpa;
/** Offset of a gpa within its page. */
export const gpaPageOffset = (gpa: Gpa): number => gpa % PAGE;
/** hva >> PAGE_SHIFT, as the index of the host virtual page. */
export const hvaToPage = (hva: Hva): number => Math.floor(hva / PAGE);
export const pageToHva = (page: number): Hva => (page * PAGE) as Hva;
/** Byte offset in a file → page cache index. */
export const offsetToPgOff = (offset: number): PgOff => Math.floor(offset / PAGE) as PgOff;
export const pgOffToOffset = (pgoff: PgOff): number => pgoff * PAGE;

/** True if `n` (bytes) is a multiple of the page size. Works for any safe integer. */
export const pageAligned = (n: number): boolean => n % PAGE === 0;
/** Round a byte count up to a whole number of pages. */
export const pageAlignUp = (n: number): number => Math.ceil(n / PAGE) * PAGE;
/** Round down to a page boundary. */
export const pageAlignDown = (n: number): number => Math.floor(n / PAGE) * PAGE;

/** 2^64 as a float, for overflow checks on u64 sums (see `u64AddOverflows`). */
export const U64_LIMIT = 2 ** 64;

/**
 * True if a + b does not fit in a u64 (the kernel's `a + b < a` wrap check).
 * Exact: sums below 2^53 are decided in floats, anything larger in BigInt.
 */
export function u64AddOverflows(a: number | bigint, b: number | bigint): boolean {
  if (typeof a === 'number' && typeof b === 'number' && a + b < Number.MAX_SAFE_INTEGER) return false;
  return BigInt(a) + BigInt(b) > 0xffff_ffff_ffff_ffffn;
}

/** Narrows a "pfn or negative code" value to a pfn. */
export const isPfn = (x: number): x is Pfn => x >= 0;

/** Length in bytes of a string's UTF-8 encoding (no TextEncoder in the browser-safe core lib). */
export function utf8Length(s: string): number {
  let n = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0) ?? 0;
    n += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
  }
  return n;
}

/**
 * A JS number as the kernel's `loff_t` (signed 64-bit): values ≥ 2^63 wrap to negative, as they
 * would when a C caller passes them. Throws TypeError for a non-integer.
 */
export function asLoff(n: number, what: string): number {
  if (!Number.isInteger(n)) throw new TypeError(`${what} ${String(n)} is not an integer`);
  return n >= 2 ** 63 ? n - 2 ** 64 : n;
}
