/**
 * Tests of the guest-program compiler: the machine code of every IR op (byte-exact, against
 * listings assembled once with GNU `as --64` 2.40 and pasted here with their source), label
 * fixups in nested loops, absolute addresses above 2^31 and 4 GiB, the terminal hlt, the
 * identity-mapping page-table image, the kvm_sregs patch (every field at its uAPI offset), the
 * initial registers, and the rejection of malformed programs and layouts. Where GNU binutils
 * are installed, two more tests re-assemble the listings and disassemble a program that uses
 * every op to check which registers the code touches; without binutils they are skipped and say so.
 */

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Op, Program } from '../../core/vcpu/program.js';
import { program } from '../../core/vcpu/program.js';
import {
  buildIdentityPageTables,
  compileProgram,
  DEFAULT_IDENTITY_MAP_BYTES,
  KVM_SREGS_SIZE,
  pageTableImageBytes,
  patchSregsLongMode,
} from './compile.js';

const LAYOUT = { codeGpa: 0x1000, pageTableGpa: 0x10000 } as const;
const GIB = 2 ** 30;
/** What every program ends with: `end: hlt; jmp end` (f4, then e9 with rel32 −6). */
const TERMINAL = 'f4 e9 fa ff ff ff';

function hex(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(' ');
}

interface CodeCase {
  readonly name: string;
  readonly program: Program;
  /** GNU as source of the expected code, before the terminal `end: hlt; {disp32} jmp end`. */
  readonly asm: readonly string[];
  /** What `as --64` produced for `asm` plus the terminal. */
  readonly bytes: string;
}

const CODE_CASES: readonly CodeCase[] = [
  {
    name: 'an empty program is the terminal hlt and a jmp back to it',
    program: { ops: [] },
    asm: [],
    bytes: 'f4 e9 fa ff ff ff',
  },
  {
    name: 'mov: the shortest encoding that gives the same 64 bits',
    program: program((b) =>
      b
        .mov('r8', 0x1234)
        .mov('r15', 0x123456789abcdef0n)
        .mov('r9', -1)
        .mov('r10', 0xffffffffffffffffn)
        .mov('r11', 0x80000000n)
        .mov('r12', 0),
    ),
    asm: [
      'mov $0x1234,%r8d',
      'movabs $0x123456789abcdef0,%r15',
      'movq $-1,%r9',
      'movq $-1,%r10',
      'mov $0x80000000,%r11d',
      'mov $0x0,%r12d',
    ],
    bytes:
      '41 b8 34 12 00 00 49 bf f0 de bc 9a 78 56 34 12 49 c7 c1 ff ff ff ff 49 c7 c2 ff ff ff ff 41 bb 00 00 00 80 41 bc 00 00 00 00 f4 e9 fa ff ff ff',
  },
  {
    name: 'add and addReg are 64-bit adds',
    program: program((b) =>
      b
        .add('r8', 1)
        .add('r12', -0x1000)
        .add('r13', 0x7fffffff)
        .add('r9', -0x80000000)
        .addReg('r14', 'r15')
        .addReg('r8', 'r8'),
    ),
    asm: [
      'add $0x1,%r8',
      'add $-0x1000,%r12',
      'add $0x7fffffff,%r13',
      'add $-0x80000000,%r9',
      'add %r15,%r14',
      'add %r8,%r8',
    ],
    bytes:
      '49 83 c0 01 49 81 c4 00 f0 ff ff 49 81 c5 ff ff ff 7f 49 81 c1 00 00 00 80 4d 01 fe 4d 01 c0 f4 e9 fa ff ff ff',
  },
  {
    name: 'load: every size zero-extends, into every IR register, from absolute and based addresses',
    program: program((b) =>
      b
        .load(1, 'r8', 0x1000)
        .load(2, 'r9', { base: 'r10', disp: 2 })
        .load(4, 'r10', { base: 'r12', disp: 0 })
        .load(8, 'r11', { base: 'r13', disp: -8 })
        .load(1, 'r12', { base: 'r8', disp: 0x12345 })
        .load(2, 'r13', 0x7ffffffe)
        .load(4, 'r14', { base: 'r15', disp: 0x100 })
        .load(8, 'r15', { base: 'r14', disp: 0 }),
    ),
    asm: [
      'movzbl 0x1000,%r8d',
      'movzwl 0x2(%r10),%r9d',
      'mov (%r12),%r10d',
      'mov -0x8(%r13),%r11',
      'movzbl 0x12345(%r8),%r12d',
      'movzwl 0x7ffffffe,%r13d',
      'mov 0x100(%r15),%r14d',
      'mov (%r14),%r15',
    ],
    bytes:
      '44 0f b6 04 25 00 10 00 00 45 0f b7 4a 02 45 8b 14 24 4d 8b 5d f8 45 0f b6 a0 45 23 01 00 44 0f b7 2c 25 fe ff ff 7f 45 8b b7 00 01 00 00 4d 8b 3e f4 e9 fa ff ff ff',
  },
  {
    name: 'store: the low 1/2/4/8 bytes of every IR register',
    program: program((b) =>
      b
        .store(1, 0x2000, 'r8')
        .store(2, { base: 'r9', disp: 1 }, 'r10')
        .store(4, { base: 'r11', disp: -4 }, 'r12')
        .store(8, { base: 'r12', disp: 0 }, 'r13')
        .store(1, { base: 'r13', disp: 0 }, 'r14')
        .store(8, 0x3000, 'r15')
        .store(2, 0x3008, 'r9')
        .store(4, 0x300c, 'r11'),
    ),
    asm: [
      'mov %r8b,0x2000',
      'mov %r10w,0x1(%r9)',
      'mov %r12d,-0x4(%r11)',
      'mov %r13,(%r12)',
      'mov %r14b,0x0(%r13)',
      'mov %r15,0x3000',
      'mov %r9w,0x3008',
      'mov %r11d,0x300c',
    ],
    bytes:
      '44 88 04 25 00 20 00 00 66 45 89 51 01 45 89 63 fc 4d 89 2c 24 45 88 75 00 4c 89 3c 25 00 30 00 00 66 44 89 0c 25 08 30 00 00 44 89 1c 25 0c 30 00 00 f4 e9 fa ff ff ff',
  },
  {
    name: 'storeImm: the low bytes of imm; size 8 sign-extends imm32',
    program: program((b) =>
      b
        .storeImm(1, 0x2000, 0x1ff)
        .storeImm(1, 0x2001, -1)
        .storeImm(2, { base: 'r8', disp: 0 }, -2)
        .storeImm(2, 0x2002, 0x12345)
        .storeImm(4, 0x2004, 0xdeadbeef)
        .storeImm(4, 0x2008, -1)
        .storeImm(8, 0x2010, 0xffffffff)
        .storeImm(8, { base: 'r9', disp: 8 }, 0x7fffffff)
        .storeImm(8, 0x2018, -0x80000000),
    ),
    asm: [
      'movb $0xff,0x2000',
      'movb $0xff,0x2001',
      'movw $0xfffe,(%r8)',
      'movw $0x2345,0x2002',
      'movl $0xdeadbeef,0x2004',
      'movl $0xffffffff,0x2008',
      'movq $-1,0x2010',
      'movq $0x7fffffff,0x8(%r9)',
      'movq $-0x80000000,0x2018',
    ],
    bytes:
      'c6 04 25 00 20 00 00 ff c6 04 25 01 20 00 00 ff 66 41 c7 00 fe ff 66 c7 04 25 02 20 00 00 45 23 c7 04 25 04 20 00 00 ef be ad de c7 04 25 08 20 00 00 ff ff ff ff 48 c7 04 25 10 20 00 00 ff ff ff ff 49 c7 41 08 ff ff ff 7f 48 c7 04 25 18 20 00 00 00 00 00 80 f4 e9 fa ff ff ff',
  },
  {
    name: 'absolute addresses at and above 2^31 (and above 4 GiB) go through rax',
    program: program((b) =>
      b
        .load(8, 'r8', 2 ** 31)
        .store(4, 2 ** 32 + 0x10, 'r9')
        .storeImm(1, 0x123456789, 0xab)
        .load(2, 'r10', 2 ** 52)
        .storeImm(8, 2 ** 33, 7)
        .cmp(8, 5 * 2 ** 30, 0, 7)
        .load(1, 'r11', 2 ** 31 - 1),
    ),
    asm: [
      'mov $0x80000000,%eax',
      'mov (%rax),%r8',
      'movabs $0x100000010,%rax',
      'mov %r9d,(%rax)',
      'movabs $0x123456789,%rax',
      'movb $0xab,(%rax)',
      'movabs $0x10000000000000,%rax',
      'movzwl (%rax),%r10d',
      'movabs $0x200000000,%rax',
      'movq $0x7,(%rax)',
      'movabs $0x140000000,%rax',
      'mov (%rax),%rbx',
      'cmp $0x0,%rbx',
      '{disp32} je 1f',
      'mov $0x7,%eax',
      'out %eax,$0xe1',
      '1:',
      'movzbl 0x7fffffff,%r11d',
    ],
    bytes:
      'b8 00 00 00 80 4c 8b 00 48 b8 10 00 00 00 01 00 00 00 44 89 08 48 b8 89 67 45 23 01 00 00 00 c6 00 ab 48 b8 00 00 00 00 00 00 10 00 44 0f b7 10 48 b8 00 00 00 00 02 00 00 00 48 c7 00 07 00 00 00 48 b8 00 00 00 40 01 00 00 00 48 8b 18 48 83 fb 00 0f 84 07 00 00 00 b8 07 00 00 00 e7 e1 44 0f b6 1c 25 ff ff ff 7f f4 e9 fa ff ff ff',
  },
  {
    name: 'base + a disp outside int32: rax (or rdi/rsi) = disp, then add the base',
    program: program((b) =>
      b
        .load(4, 'r8', { base: 'r9', disp: 2 ** 32 })
        .store(8, { base: 'r10', disp: -(2 ** 33) }, 'r11')
        .fill({ base: 'r12', disp: 2 ** 40 }, 16, 0)
        .copy({ base: 'r13', disp: 2 ** 31 }, { base: 'r14', disp: -(2 ** 31) - 1 }, 8),
    ),
    asm: [
      'movabs $0x100000000,%rax',
      'add %r9,%rax',
      'mov (%rax),%r8d',
      'movabs $0xfffffffe00000000,%rax',
      'add %r10,%rax',
      'mov %r11,(%rax)',
      'movabs $0x10000000000,%rdi',
      'add %r12,%rdi',
      'mov $0x0,%al',
      'mov $0x10,%ecx',
      'rep stosb',
      'mov $0x80000000,%edi',
      'add %r13,%rdi',
      'movabs $0xffffffff7fffffff,%rsi',
      'add %r14,%rsi',
      'mov $0x8,%ecx',
      'rep movsb',
    ],
    bytes:
      '48 b8 00 00 00 00 01 00 00 00 4c 01 c8 44 8b 00 48 b8 00 00 00 00 fe ff ff ff 4c 01 d0 4c 89 18 48 bf 00 00 00 00 00 01 00 00 4c 01 e7 b0 00 b9 10 00 00 00 f3 aa bf 00 00 00 80 4c 01 ef 48 be ff ff ff 7f ff ff ff ff 4c 01 f6 b9 08 00 00 00 f3 a4 f4 e9 fa ff ff ff',
  },
  {
    name: 'fill is rep stosb and copy rep movsb, with rdi/rsi/rcx/al set first',
    program: program((b) =>
      b
        .fill(0x3000, 0x1000, 0xab)
        .fill({ base: 'r8', disp: 0x10 }, 2 ** 32, 0)
        .copy(0x4000, 0x3000, 0x800)
        .copy({ base: 'r9', disp: 0 }, { base: 'r10', disp: -0x10 }, 0)
        .fill(2 ** 32, 1, 0xff),
    ),
    asm: [
      'mov $0x3000,%edi',
      'mov $0xab,%al',
      'mov $0x1000,%ecx',
      'rep stosb',
      'lea 0x10(%r8),%rdi',
      'mov $0x0,%al',
      'movabs $0x100000000,%rcx',
      'rep stosb',
      'mov $0x4000,%edi',
      'mov $0x3000,%esi',
      'mov $0x800,%ecx',
      'rep movsb',
      'lea (%r9),%rdi',
      'lea -0x10(%r10),%rsi',
      'mov $0x0,%ecx',
      'rep movsb',
      'movabs $0x100000000,%rdi',
      'mov $0xff,%al',
      'mov $0x1,%ecx',
      'rep stosb',
    ],
    bytes:
      'bf 00 30 00 00 b0 ab b9 00 10 00 00 f3 aa 49 8d 78 10 b0 00 48 b9 00 00 00 00 01 00 00 00 f3 aa bf 00 40 00 00 be 00 30 00 00 b9 00 08 00 00 f3 a4 49 8d 39 49 8d 72 f0 b9 00 00 00 00 f3 a4 48 bf 00 00 00 00 01 00 00 00 b0 ff b9 01 00 00 00 f3 aa f4 e9 fa ff ff ff',
  },
  {
    name: 'cmp: zero-extending load into rbx, compare with expect (imm32 or via rax), report on mismatch',
    program: program((b) =>
      b
        .cmp(1, 0x1000, 0x5a, 1)
        .cmp(2, { base: 'r8', disp: 2 }, 0xffff, 2)
        .cmp(4, 0x1004, 0xffffffff, 3)
        .cmp(8, { base: 'r15', disp: -8 }, 0x123456789n, 4)
        .cmp(8, 0x1008, -1n, 0xffffffff)
        .cmp(8, 0x1010, 0xffffffff80000000n, 6)
        .cmp(4, 0x1000, 0x7fffffff, 7)
        .cmp(1, 0x1000, 0x80000000n, -1),
    ),
    asm: [
      'movzbl 0x1000,%ebx',
      'cmp $0x5a,%rbx',
      '{disp32} je 1f',
      'mov $0x1,%eax',
      'out %eax,$0xe1',
      '1:',
      'movzwl 0x2(%r8),%ebx',
      'cmp $0xffff,%rbx',
      '{disp32} je 2f',
      'mov $0x2,%eax',
      'out %eax,$0xe1',
      '2:',
      'mov 0x1004,%ebx',
      'mov $0xffffffff,%eax',
      'cmp %rax,%rbx',
      '{disp32} je 3f',
      'mov $0x3,%eax',
      'out %eax,$0xe1',
      '3:',
      'mov -0x8(%r15),%rbx',
      'movabs $0x123456789,%rax',
      'cmp %rax,%rbx',
      '{disp32} je 4f',
      'mov $0x4,%eax',
      'out %eax,$0xe1',
      '4:',
      'mov 0x1008,%rbx',
      'cmp $-1,%rbx',
      '{disp32} je 5f',
      'mov $0xffffffff,%eax',
      'out %eax,$0xe1',
      '5:',
      'mov 0x1010,%rbx',
      'cmp $-0x80000000,%rbx',
      '{disp32} je 6f',
      'mov $0x6,%eax',
      'out %eax,$0xe1',
      '6:',
      'mov 0x1000,%ebx',
      'cmp $0x7fffffff,%rbx',
      '{disp32} je 7f',
      'mov $0x7,%eax',
      'out %eax,$0xe1',
      '7:',
      'movzbl 0x1000,%ebx',
      'mov $0x80000000,%eax',
      'cmp %rax,%rbx',
      '{disp32} je 8f',
      'mov $0xffffffff,%eax',
      'out %eax,$0xe1',
      '8:',
    ],
    bytes:
      '0f b6 1c 25 00 10 00 00 48 83 fb 5a 0f 84 07 00 00 00 b8 01 00 00 00 e7 e1 41 0f b7 58 02 48 81 fb ff ff 00 00 0f 84 07 00 00 00 b8 02 00 00 00 e7 e1 8b 1c 25 04 10 00 00 b8 ff ff ff ff 48 39 c3 0f 84 07 00 00 00 b8 03 00 00 00 e7 e1 49 8b 5f f8 48 b8 89 67 45 23 01 00 00 00 48 39 c3 0f 84 07 00 00 00 b8 04 00 00 00 e7 e1 48 8b 1c 25 08 10 00 00 48 83 fb ff 0f 84 07 00 00 00 b8 ff ff ff ff e7 e1 48 8b 1c 25 10 10 00 00 48 81 fb 00 00 00 80 0f 84 07 00 00 00 b8 06 00 00 00 e7 e1 8b 1c 25 00 10 00 00 48 81 fb ff ff ff 7f 0f 84 07 00 00 00 b8 07 00 00 00 e7 e1 0f b6 1c 25 00 10 00 00 b8 00 00 00 80 48 39 c3 0f 84 07 00 00 00 b8 ff ff ff ff e7 e1 f4 e9 fa ff ff ff',
  },
  {
    name: 'sync: mov eax, tag; out 0xe0, eax',
    program: program((b) => b.sync(0).sync(0xdeadbeef)),
    asm: ['mov $0x0,%eax', 'out %eax,$0xe0', 'mov $0xdeadbeef,%eax', 'out %eax,$0xe0'],
    bytes: 'b8 00 00 00 00 e7 e0 b8 ef be ad de e7 e0 f4 e9 fa ff ff ff',
  },
  {
    name: 'hypercall: rax = nr, rbx/rcx/rdx = args (immediates or registers), vmcall, ret = rax',
    program: program((b) =>
      b
        .hypercall(12, [0x100000, 'r9', 2n ** 40n], 'r8')
        .hypercall(1, ['r10', 'r11', 'r12'], 'r15')
        .hypercall(0, [-1, 0, 0xffffffffn], 'r8'),
    ),
    asm: [
      'mov $0xc,%eax',
      'mov $0x100000,%ebx',
      'mov %r9,%rcx',
      'movabs $0x10000000000,%rdx',
      'vmcall',
      'mov %rax,%r8',
      'mov $0x1,%eax',
      'mov %r10,%rbx',
      'mov %r11,%rcx',
      'mov %r12,%rdx',
      'vmcall',
      'mov %rax,%r15',
      'mov $0x0,%eax',
      'movq $-1,%rbx',
      'mov $0x0,%ecx',
      'mov $0xffffffff,%edx',
      'vmcall',
      'mov %rax,%r8',
    ],
    bytes:
      'b8 0c 00 00 00 bb 00 00 10 00 4c 89 c9 48 ba 00 00 00 00 00 01 00 00 0f 01 c1 49 89 c0 b8 01 00 00 00 4c 89 d3 4c 89 d9 4c 89 e2 0f 01 c1 49 89 c7 b8 00 00 00 00 48 c7 c3 ff ff ff ff b9 00 00 00 00 ba ff ff ff ff 0f 01 c1 49 89 c0 f4 e9 fa ff ff ff',
  },
  {
    name: 'nested loops: mov counter, n; top: body; dec counter; jnz top — every jump lands on its own top',
    program: program((b) =>
      b
        .loop('r8', 3, (o) =>
          o.loop('r9', 2, (i) => i.storeImm(1, { base: 'r10', disp: 0 }, 1).add('r10', 1)).sync(1),
        )
        .loop('r15', 1, (l) => l.loop('r14', 1, (m) => m.loop('r13', 5, () => {}))),
    ),
    asm: [
      'mov $0x3,%r8d',
      '1:',
      'mov $0x2,%r9d',
      '2:',
      'movb $0x1,(%r10)',
      'add $0x1,%r10',
      'dec %r9',
      '{disp32} jne 2b',
      'mov $0x1,%eax',
      'out %eax,$0xe0',
      'dec %r8',
      '{disp32} jne 1b',
      'mov $0x1,%r15d',
      '3:',
      'mov $0x1,%r14d',
      '4:',
      'mov $0x5,%r13d',
      '5:',
      'dec %r13',
      '{disp32} jne 5b',
      'dec %r14',
      '{disp32} jne 4b',
      'dec %r15',
      '{disp32} jne 3b',
    ],
    bytes:
      '41 b8 03 00 00 00 41 b9 02 00 00 00 41 c6 02 01 49 83 c2 01 49 ff c9 0f 85 ef ff ff ff b8 01 00 00 00 e7 e0 49 ff c8 0f 85 d9 ff ff ff 41 bf 01 00 00 00 41 be 01 00 00 00 41 bd 05 00 00 00 49 ff cd 0f 85 f7 ff ff ff 49 ff ce 0f 85 e8 ff ff ff 49 ff cf 0f 85 d9 ff ff ff f4 e9 fa ff ff ff',
  },
  {
    name: 'halt mid-program is a hlt; a final top-level halt becomes the terminal hlt',
    program: program((b) => b.sync(1).halt().sync(2).halt()),
    asm: ['mov $0x1,%eax', 'out %eax,$0xe0', 'hlt', 'mov $0x2,%eax', 'out %eax,$0xe0'],
    bytes: 'b8 01 00 00 00 e7 e0 f4 b8 02 00 00 00 e7 e0 f4 e9 fa ff ff ff',
  },
  {
    name: 'a halt at the end of a loop body is not the end of the program: the terminal hlt is appended',
    program: program((b) => b.loop('r8', 2, (l) => l.halt())),
    asm: ['mov $0x2,%r8d', '1:', 'hlt', 'dec %r8', '{disp32} jne 1b'],
    bytes: '41 b8 02 00 00 00 f4 49 ff c8 0f 85 f6 ff ff ff f4 e9 fa ff ff ff',
  },
];

describe('compiled code matches the GNU as listings byte for byte', () => {
  it.each(CODE_CASES.map((c) => ({ ...c })))('$name', ({ program: p, bytes }) => {
    const image = compileProgram(p, LAYOUT);
    expect(hex(image.code)).toBe(bytes);
    expect(hex(image.code).endsWith(TERMINAL)).toBe(true);
  });
});

describe('the terminal hlt', () => {
  it('an empty program is exactly hlt; jmp back to that hlt', () => {
    expect(hex(compileProgram({ ops: [] }, LAYOUT).code)).toBe(TERMINAL);
  });

  it('a program that ends in halt does not get a second hlt', () => {
    const withHalt = compileProgram(
      program((b) => b.sync(1).halt()),
      LAYOUT,
    ).code;
    const without = compileProgram(
      program((b) => b.sync(1)),
      LAYOUT,
    ).code;
    expect(hex(withHalt)).toBe(hex(without));
    expect(withHalt.filter((x) => x === 0xf4).length).toBe(1);
  });

  it('a halt before the end stays, and the jmp targets only the last hlt', () => {
    const code = compileProgram(
      program((b) => b.halt().halt()),
      LAYOUT,
    ).code;
    // hlt; end: hlt; jmp end  →  the jmp's rel32 goes back over itself (5) and the hlt (1).
    expect(hex(code)).toBe('f4 f4 e9 fa ff ff ff');
  });
});

describe('the hypercall instruction', () => {
  const p = program((b) => b.hypercall(12, [0x1000, 1, 0], 'r8'));
  // mov $0xc,%eax; mov $0x1000,%ebx; mov $0x1,%ecx; mov $0x0,%edx; <insn>; mov %rax,%r8; terminal
  const around = (insn: string) =>
    `b8 0c 00 00 00 bb 00 10 00 00 b9 01 00 00 00 ba 00 00 00 00 ${insn} 49 89 c0 ${TERMINAL}`;

  it('is vmcall (0f 01 c1) by default', () => {
    expect(hex(compileProgram(p, LAYOUT).code)).toBe(around('0f 01 c1'));
    expect(hex(compileProgram(p, LAYOUT, { hypercallInsn: 'vmcall' }).code)).toBe(around('0f 01 c1'));
  });

  it("is vmmcall (0f 01 d9) with hypercallInsn: 'vmmcall', for AMD hosts", () => {
    expect(hex(compileProgram(p, LAYOUT, { hypercallInsn: 'vmmcall' }).code)).toBe(around('0f 01 d9'));
  });

  it('rejects any other instruction name', () => {
    // deliberately invalid, past the type
    expect(() => compileProgram(p, LAYOUT, { hypercallInsn: 'syscall' as 'vmcall' })).toThrow(
      /hypercallInsn 'syscall' is not 'vmcall' or 'vmmcall'/,
    );
  });
});

describe('jump targets in nested loops', () => {
  it('each jnz lands on the first instruction of its own loop body, at any depth', () => {
    // Five nested loops, each body = [inner loop] + sync(depth): the sizes differ by depth, so a
    // fixup attached to the wrong label would land elsewhere.
    const nest = (depth: number): Op[] =>
      depth === 5
        ? [{ op: 'sync', tag: depth }]
        : [
            {
              op: 'loop',
              counter: (['r8', 'r9', 'r10', 'r11', 'r12'] as const)[depth] ?? 'r8',
              count: depth + 2,
              body: nest(depth + 1),
            },
            { op: 'sync', tag: depth },
          ];
    const code = compileProgram({ ops: nest(0) }, LAYOUT).code;
    // Find each `mov rN, imm32` (41 b8+n id) that starts a loop, then its matching
    // `dec rN; jnz` (49 ff c8+n, 0f 85 rel32): the jump target must be right after the mov.
    const view = new DataView(code.buffer, code.byteOffset, code.byteLength);
    for (let n = 0; n < 5; n++) {
      const movAt = code.findIndex((b, i) => b === 0x41 && code[i + 1] === 0xb8 + n);
      expect(movAt, `mov r${8 + n}`).toBeGreaterThanOrEqual(0);
      expect(view.getUint32(movAt + 2, true)).toBe(n + 2);
      const decAt = code.findIndex((b, i) => b === 0x49 && code[i + 1] === 0xff && code[i + 2] === 0xc8 + n);
      expect(code[decAt + 3]).toBe(0x0f);
      expect(code[decAt + 4]).toBe(0x85);
      const target = decAt + 9 + view.getInt32(decAt + 5, true);
      expect(target, `loop r${8 + n}`).toBe(movAt + 6);
    }
  });
});

describe('page tables', () => {
  function entry(pt: Uint8Array, offset: number): bigint {
    return new DataView(pt.buffer, pt.byteOffset, pt.byteLength).getBigUint64(offset, true);
  }

  it('default: 8 GiB identity map = PML4 + PDPT + 8 PDs = 40 KiB', () => {
    expect(DEFAULT_IDENTITY_MAP_BYTES).toBe(8 * GIB);
    const pt = compileProgram({ ops: [] }, LAYOUT).pageTables;
    expect(pt.length).toBe(40 * 1024);
    expect(pageTableImageBytes(8 * GIB)).toBe(40 * 1024);
  });

  it('PML4[0] → PDPT, PDPT[i] → PD i, PD entries are 2 MiB identity pages with P|RW|PS', () => {
    const pt = compileProgram({ ops: [] }, LAYOUT).pageTables;
    expect(entry(pt, 0)).toBe(0x11003n); // PDPT at 0x10000 + 0x1000, P|RW
    for (let i = 1; i < 512; i++) expect(entry(pt, 8 * i)).toBe(0n);
    for (let i = 0; i < 8; i++) expect(entry(pt, 0x1000 + 8 * i)).toBe(BigInt(0x12000 + i * 0x1000 + 3));
    for (let i = 8; i < 512; i++) expect(entry(pt, 0x1000 + 8 * i)).toBe(0n);
    expect(entry(pt, 0x2000)).toBe(0x83n); // PD 0 entry 0: gpa 0
    expect(entry(pt, 0x2008)).toBe(0x200083n); // PD 0 entry 1: gpa 2 MiB
    expect(entry(pt, 0x2ff8)).toBe(0x3fe00083n); // PD 0 entry 511: gpa 1 GiB − 2 MiB
    expect(entry(pt, 0x3000)).toBe(0x40000083n); // PD 1 entry 0: gpa 1 GiB
    expect(entry(pt, 0x6000)).toBe(0x100000083n); // PD 4 entry 0: gpa 4 GiB
    expect(entry(pt, 0x6008)).toBe(0x100200083n);
    expect(entry(pt, 0x9ff8)).toBe(0x1ffe00083n); // PD 7 entry 511: gpa 8 GiB − 2 MiB
    // every PD entry, by formula
    for (let i = 0; i < 8 * 512; i++) {
      expect(entry(pt, 0x2000 + 8 * i)).toBe(BigInt(i) * 0x200000n + 0x83n);
    }
  });

  it('entries point at the tables wherever the image is placed', () => {
    const pt = buildIdentityPageTables(0x7fff000, GIB);
    expect(pt.length).toBe(3 * 4096);
    expect(entry(pt, 0)).toBe(0x8000003n);
    expect(entry(pt, 0x1000)).toBe(0x8001003n);
    expect(entry(pt, 0x1008)).toBe(0n);
    expect(entry(pt, 0x2ff8)).toBe(0x3fe00083n);
  });

  it('512 GiB (the maximum) fills the whole PDPT: 2 MiB + 8 KiB of tables', () => {
    const pt = compileProgram({ ops: [] }, LAYOUT, { identityMapBytes: 512 * GIB }).pageTables;
    expect(pt.length).toBe(2 * 1024 * 1024 + 8 * 1024);
    expect(entry(pt, 0x1000 + 8 * 511)).toBe(BigInt(0x10000 + 0x2000 + 511 * 0x1000 + 3));
    expect(entry(pt, pt.length - 8)).toBe(512n * 0x40000000n - 0x200000n + 0x83n);
  });

  it('identityMapBytes 1 GiB: one PD', () => {
    const pt = compileProgram({ ops: [] }, LAYOUT, { identityMapBytes: GIB }).pageTables;
    expect(pt.length).toBe(3 * 4096);
    expect(entry(pt, 0x1008)).toBe(0n);
  });

  it.each([0, GIB / 2, 1.5 * GIB, 513 * GIB, 1024 * GIB, -GIB, Number.NaN])(
    'rejects identityMapBytes %d',
    (bytes) => {
      expect(() => compileProgram({ ops: [] }, LAYOUT, { identityMapBytes: bytes })).toThrow(
        /identityMapBytes .* is not a multiple of 1 GiB in \[1 GiB, 512 GiB\]/,
      );
    },
  );

  it.each([0x10001, 0x10800, -4096, 0.5])('rejects pageTableGpa %d (not 4 KiB aligned)', (gpa) => {
    expect(() => compileProgram({ ops: [] }, { codeGpa: 0x1000, pageTableGpa: gpa })).toThrow(
      /pageTableGpa .* is not a 4 KiB-aligned/,
    );
  });
});

describe('patchSregs', () => {
  const SENTINEL = 0xee;
  function patched(pageTableGpa = 0x10000): { bytes: Uint8Array; view: DataView } {
    const bytes = new Uint8Array(KVM_SREGS_SIZE).fill(SENTINEL);
    compileProgram({ ops: [] }, { codeGpa: 0x1000, pageTableGpa }).patchSregs(bytes);
    return { bytes, view: new DataView(bytes.buffer) };
  }
  /** struct kvm_segment at `at`: base u64 @0, limit u32 @8, selector u16 @12, u8 fields @14..23. */
  function segment(view: DataView, at: number) {
    return {
      base: view.getBigUint64(at, true),
      limit: view.getUint32(at + 8, true),
      selector: view.getUint16(at + 12, true),
      type: view.getUint8(at + 14),
      present: view.getUint8(at + 15),
      dpl: view.getUint8(at + 16),
      db: view.getUint8(at + 17),
      s: view.getUint8(at + 18),
      l: view.getUint8(at + 19),
      g: view.getUint8(at + 20),
      avl: view.getUint8(at + 21),
      unusable: view.getUint8(at + 22),
      padding: view.getUint8(at + 23),
    };
  }
  const flat = { base: 0n, limit: 0xffffffff, dpl: 0, present: 1, avl: 0, unusable: 0, padding: 0 };

  it('is 312 bytes, the size of struct kvm_sregs', () => {
    expect(KVM_SREGS_SIZE).toBe(312);
  });

  it('cs @0: 64-bit code segment, type 0xb, L=1, D/B=0, S=1, present', () => {
    const { view } = patched();
    expect(segment(view, 0)).toEqual({ ...flat, selector: 8, type: 0xb, db: 0, s: 1, l: 1, g: 1 });
  });

  it.each([
    ['ds', 24],
    ['es', 48],
    ['fs', 72],
    ['gs', 96],
    ['ss', 120],
  ])('%s @%d: flat read/write data segment, type 3', (_name, at) => {
    const { view } = patched();
    expect(segment(view, at)).toEqual({ ...flat, selector: 0x10, type: 3, db: 1, s: 1, l: 0, g: 1 });
  });

  it('tr @144: busy 64-bit TSS, type 0xb, S=0, limit 0x67', () => {
    const { view } = patched();
    expect(segment(view, 144)).toEqual({
      base: 0n,
      limit: 0x67,
      selector: 0x18,
      type: 0xb,
      present: 1,
      dpl: 0,
      db: 0,
      s: 0,
      l: 0,
      g: 0,
      avl: 0,
      unusable: 0,
      padding: 0,
    });
  });

  it('gdt @192 and idt @208: base 0, limit 0; their padding is untouched', () => {
    const { bytes, view } = patched();
    for (const at of [192, 208]) {
      expect(view.getBigUint64(at, true)).toBe(0n);
      expect(view.getUint16(at + 8, true)).toBe(0);
      expect([...bytes.subarray(at + 10, at + 16)]).toEqual(Array(6).fill(SENTINEL));
    }
  });

  it('cr0 @224 = PG|ET|PE, cr3 @240 = pageTableGpa, cr4 @248 = PAE, efer @264 = LME|LMA', () => {
    const { view } = patched(0x7654000);
    expect(view.getBigUint64(224, true)).toBe(0x80000011n);
    expect(view.getBigUint64(240, true)).toBe(0x7654000n);
    expect(view.getBigUint64(248, true)).toBe(0x20n);
    expect(view.getBigUint64(264, true)).toBe(0x500n);
  });

  it('leaves ldt, cr2, cr8, apic_base and interrupt_bitmap as they were', () => {
    const { bytes } = patched();
    const untouched = (from: number, to: number) =>
      [...bytes.subarray(from, to)].every((b) => b === SENTINEL);
    expect(untouched(168, 192)).toBe(true); // ldt
    expect(untouched(232, 240)).toBe(true); // cr2
    expect(untouched(256, 264)).toBe(true); // cr8
    expect(untouched(272, 280)).toBe(true); // apic_base
    expect(untouched(280, 312)).toBe(true); // interrupt_bitmap
  });

  it('writes nothing outside the fields it sets (exact byte map)', () => {
    const { bytes } = patched();
    const written = new Set<number>();
    const range = (from: number, to: number) => {
      for (let i = from; i < to; i++) written.add(i);
    };
    range(0, 168); // cs, ds, es, fs, gs, ss, tr
    range(192, 202); // gdt base + limit
    range(208, 218); // idt base + limit
    range(224, 232); // cr0
    range(240, 256); // cr3, cr4
    range(264, 272); // efer
    bytes.forEach((b, i) => {
      if (!written.has(i)) expect(b, `byte ${i}`).toBe(SENTINEL);
    });
  });

  it('patches a view with a nonzero byteOffset into a larger buffer, and nothing around it', () => {
    const big = new Uint8Array(KVM_SREGS_SIZE + 64).fill(SENTINEL);
    const sregs = big.subarray(32, 32 + KVM_SREGS_SIZE);
    patchSregsLongMode(sregs, 0x20000);
    const view = new DataView(big.buffer, 32);
    expect(view.getBigUint64(240, true)).toBe(0x20000n);
    expect(view.getUint8(19)).toBe(1); // cs.l
    expect([...big.subarray(0, 32)].every((b) => b === SENTINEL)).toBe(true);
    expect([...big.subarray(32 + KVM_SREGS_SIZE)].every((b) => b === SENTINEL)).toBe(true);
  });

  it.each([0, 311, 313, 512])('rejects a %d-byte buffer', (n) => {
    const image = compileProgram({ ops: [] }, LAYOUT);
    expect(() => image.patchSregs(new Uint8Array(n))).toThrow(/kvm_sregs is 312 bytes/);
  });
});

describe('initial registers and layout', () => {
  it('rip = codeGpa, rflags = 2 (reserved bit 1 only: IF=0, DF=0), rsp = 0', () => {
    const image = compileProgram({ ops: [] }, { codeGpa: 0x234000, pageTableGpa: 0x10000 });
    expect(image.regs).toEqual({ rip: 0x234000n, rflags: 2n, rsp: 0n });
  });

  it('accepts code right below the page tables, and right after them', () => {
    const p = program((b) => b.sync(1));
    const len = compileProgram(p, LAYOUT).code.length;
    expect(() => compileProgram(p, { codeGpa: 0x10000 - len, pageTableGpa: 0x10000 })).not.toThrow();
    expect(() => compileProgram(p, { codeGpa: 0x10000 + 40 * 1024, pageTableGpa: 0x10000 })).not.toThrow();
  });

  it('rejects code that overlaps the page tables', () => {
    const p = program((b) => b.sync(1));
    const len = compileProgram(p, LAYOUT).code.length;
    expect(() => compileProgram(p, { codeGpa: 0x10000 - len + 1, pageTableGpa: 0x10000 })).toThrow(
      /overlaps the page tables at 0x10000\.\.0x1a000/,
    );
    expect(() => compileProgram(p, { codeGpa: 0x19fff, pageTableGpa: 0x10000 })).toThrow(/overlaps/);
  });

  it('rejects code outside the identity map (it could not be fetched)', () => {
    expect(() => compileProgram({ ops: [] }, { codeGpa: 8 * GIB - 3, pageTableGpa: 0x10000 })).toThrow(
      /is not inside the identity map/,
    );
    expect(() =>
      compileProgram({ ops: [] }, { codeGpa: GIB, pageTableGpa: 0x10000 }, { identityMapBytes: GIB }),
    ).toThrow(/is not inside the identity map/);
    expect(() => compileProgram({ ops: [] }, { codeGpa: -1, pageTableGpa: 0x10000 })).toThrow(RangeError);
  });
});

describe('malformed programs are rejected with the op path in the message', () => {
  // Programs also arrive from JSON (traces, scenarios), so the compiler checks at run time what
  // the types promise; the casts below push deliberately invalid values past the types.
  const cases: readonly (readonly [string, Op, RegExp])[] = [
    [
      'a register outside r8..r15',
      { op: 'mov', dst: 'rax' as 'r8', imm: 1n },
      /ops\[0\] mov: 'rax' is not an IR register/,
    ],
    ['a 3-byte access', { op: 'load', size: 3 as 4, dst: 'r8', addr: { disp: 0 } }, /access size 3/],
    ['a 64-bit mov immediate ≥ 2^64', { op: 'mov', dst: 'r8', imm: 1n << 64n }, /imm: 18446744073709551616/],
    ['a mov immediate < −2^63', { op: 'mov', dst: 'r8', imm: -(1n << 63n) - 1n }, /imm/],
    ['an add immediate ≥ 2^31', { op: 'add', dst: 'r8', imm: 2 ** 31 }, /imm: 2147483648/],
    ['a storeImm immediate ≥ 2^32', { op: 'storeImm', size: 4, addr: { disp: 0 }, imm: 2 ** 32 }, /imm/],
    [
      'a negative absolute address',
      { op: 'load', size: 1, dst: 'r8', addr: { disp: -8 } },
      /absolute gpa: -8/,
    ],
    ['a fractional disp', { op: 'store', size: 1, addr: { base: 'r9', disp: 0.5 }, src: 'r8' }, /disp: 0.5/],
    [
      'an unsafe-integer absolute address',
      { op: 'load', size: 1, dst: 'r8', addr: { disp: 2 ** 60 } },
      /absolute gpa/,
    ],
    [
      'a bad base register',
      { op: 'load', size: 1, dst: 'r8', addr: { base: 'rsp' as 'r8', disp: 0 } },
      /base: 'rsp'/,
    ],
    ['a fill byte > 255', { op: 'fill', addr: { disp: 0 }, len: 1, byte: 256 }, /byte: 256/],
    ['a negative fill length', { op: 'fill', addr: { disp: 0 }, len: -1, byte: 0 }, /len: -1/],
    ['a fractional copy length', { op: 'copy', dst: { disp: 0 }, src: { disp: 8 }, len: 1.5 }, /len: 1.5/],
    ['a loop count of 0', { op: 'loop', counter: 'r8', count: 0, body: [] }, /count: 0/],
    ['a sync tag ≥ 2^32', { op: 'sync', tag: 2 ** 32 }, /tag: 4294967296/],
    ['a cmp tag < −2^31', { op: 'cmp', size: 1, addr: { disp: 0 }, expect: 0n, tag: -(2 ** 31) - 1 }, /tag/],
    ['a cmp expect ≥ 2^64', { op: 'cmp', size: 8, addr: { disp: 0 }, expect: 1n << 64n, tag: 1 }, /expect/],
    [
      'a hypercall with 2 args',
      { op: 'hypercall', nr: 12, args: [1, 2] as unknown as [number, number, number], ret: 'r8' },
      /exactly 3 arguments/,
    ],
    [
      'a hypercall arg register outside r8..r15',
      { op: 'hypercall', nr: 12, args: ['rbx' as 'r8', 0, 0], ret: 'r8' },
      /a0: 'rbx'/,
    ],
    [
      'a hypercall ret register outside r8..r15',
      { op: 'hypercall', nr: 12, args: [0, 0, 0], ret: 'rax' as 'r8' },
      /ret: 'rax'/,
    ],
    ['an unknown op', { op: 'nop' } as unknown as Op, /unknown op/],
  ];
  it.each(cases)('%s', (_name, op, message) => {
    expect(() => compileProgram({ ops: [op] }, LAYOUT)).toThrow(message);
  });

  it('names the path of an op inside nested loops', () => {
    // Built by hand: the builder would refuse the bad immediate itself.
    const bad: Op = { op: 'add', dst: 'r10', imm: 2 ** 31 };
    const inner: Op = { op: 'loop', counter: 'r9', count: 2, body: [bad] };
    const p: Program = {
      ops: [
        { op: 'sync', tag: 1 },
        { op: 'loop', counter: 'r8', count: 2, body: [{ op: 'sync', tag: 2 }, inner] },
      ],
    };
    expect(() => compileProgram(p, LAYOUT)).toThrow(/ops\[1\] loop\.body\[1\] loop\.body\[0\] add: imm/);
  });
});

// ---------------------------------------------------------------------------------------------
// Cross-checks with GNU binutils, when installed.

const haveAs =
  spawnSync('as', ['--version']).status === 0 && spawnSync('objcopy', ['--version']).status === 0;
const haveObjdump = spawnSync('objdump', ['--version']).status === 0;

describe('cross-checks with GNU binutils', () => {
  it.skipIf(!haveAs)(
    `every listing above still assembles to its pasted bytes${haveAs ? '' : ' (skipped: GNU as/objcopy not found on PATH)'}`,
    () => {
      const dir = mkdtempSync(join(tmpdir(), 'guestmem-compile-'));
      try {
        for (const c of CODE_CASES) {
          const src = join(dir, 'c.s');
          writeFileSync(src, ['.text', ...c.asm, 'end:', 'hlt', '{disp32} jmp end', ''].join('\n'));
          execFileSync('as', ['--64', '-o', join(dir, 'c.o'), src]);
          execFileSync('objcopy', ['-O', 'binary', '-j', '.text', join(dir, 'c.o'), join(dir, 'c.bin')]);
          expect(hex(readFileSync(join(dir, 'c.bin'))), c.name).toBe(c.bytes);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it.skipIf(!haveObjdump)(
    `compiled code names only rax/rbx/rcx/rdx/rsi/rdi and the IR registers of the program${haveObjdump ? '' : ' (skipped: GNU objdump not found on PATH)'}`,
    () => {
      // Every op, with r8 and r9 as the only IR registers; absolute and based addresses above 2^31.
      const p = program((b) =>
        b
          .mov('r8', 0x123456789n)
          .add('r8', 4)
          .addReg('r9', 'r8')
          .load(8, 'r9', 2 ** 33)
          .load(1, 'r9', { base: 'r8', disp: 2 ** 32 })
          .store(2, 0x2000, 'r9')
          .storeImm(8, 2 ** 31, -1)
          .fill({ base: 'r8', disp: -(2 ** 40) }, 4096, 0xab)
          .copy(2 ** 32, { base: 'r9', disp: 8 }, 64)
          .cmp(8, 0x3000, 0x1122334455667788n, 9)
          .loop('r8', 3, (l) => l.sync(1).hypercall(12, ['r9', 1, 2n ** 40n], 'r9'))
          .halt(),
      );
      const dir = mkdtempSync(join(tmpdir(), 'guestmem-compile-'));
      try {
        const file = join(dir, 'code.bin');
        writeFileSync(file, compileProgram(p, LAYOUT).code);
        const out = execFileSync('objdump', ['-D', '-b', 'binary', '-m', 'i386:x86-64', '-w', file], {
          encoding: 'utf8',
        });
        // Map every register name objdump prints to its 64-bit register (es/ds are the implicit
        // segments objdump writes for the string instructions).
        const family = (name: string): string => {
          const m = /^r(\d+)[dwb]?$/.exec(name);
          if (m) return `r${m[1]}`;
          const legacy: Record<string, string> = {
            al: 'rax',
            eax: 'rax',
            ebx: 'rbx',
            ecx: 'rcx',
            edx: 'rdx',
            dx: 'rdx',
            esi: 'rsi',
            edi: 'rdi',
          };
          return legacy[name] ?? name;
        };
        const used = new Set([...out.matchAll(/%([a-z0-9]+)/g)].map((m) => family(m[1] ?? '')));
        used.delete('es');
        used.delete('ds');
        expect([...used].sort()).toEqual(['r8', 'r9', 'rax', 'rbx', 'rcx', 'rdi', 'rdx', 'rsi']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
