/**
 * Enforces the layering of architecture §1: imports only point down.
 *
 *   src/core  → src/core only; no node:* and no packages (the model runs in a browser)
 *   src/host  → src/core, src/host, node:*, packages
 *   src/vmm   → src/core, src/host, src/vmm, packages
 *   src/cli   → anything under src
 *
 * Every import and export specifier of every non-test file under src/ is resolved and checked.
 * Exits 1 with one line per violation. Run by `npm run lint`, so `npm test` fails on a violation.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import ts from 'typescript';

const root = resolve(dirname(new URL(import.meta.url).pathname), '..');
const src = join(root, 'src');

type Layer = 'core' | 'host' | 'vmm' | 'cli' | 'web' | 'root';
const allowed: Record<Layer, { layers: Layer[]; node: boolean; packages: boolean }> = {
  core: { layers: ['core'], node: false, packages: false },
  host: { layers: ['core', 'host'], node: true, packages: true },
  vmm: { layers: ['core', 'host', 'vmm'], node: true, packages: true },
  web: { layers: ['core', 'vmm', 'web'], node: false, packages: true },
  cli: { layers: ['core', 'host', 'vmm', 'cli'], node: true, packages: true },
  root: { layers: ['core', 'host', 'vmm', 'cli', 'root'], node: true, packages: true },
};

function layerOf(file: string): Layer {
  const rel = relative(src, file).split(sep);
  const top = rel.length > 1 ? rel[0] : 'root';
  if (top === 'core' || top === 'host' || top === 'vmm' || top === 'cli' || top === 'web') return top;
  return 'root';
}

function* walk(dir: string): Generator<string> {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* walk(p);
    else if (p.endsWith('.ts') && !p.endsWith('.test.ts') && !p.endsWith('.d.ts')) yield p;
  }
}

const violations: string[] = [];
for (const file of walk(src)) {
  const layer = layerOf(file);
  const rule = allowed[layer];
  const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  for (const ref of info.importedFiles) {
    const spec = ref.fileName;
    const where = `${relative(root, file)}: '${spec}'`;
    if (spec.startsWith('node:')) {
      if (!rule.node) violations.push(`${where}: src/${layer} may not import node:* modules`);
    } else if (spec.startsWith('.')) {
      const target = resolve(dirname(file), spec);
      if (!target.startsWith(src + sep)) {
        violations.push(`${where}: imports outside src/`);
        continue;
      }
      const tlayer = layerOf(target);
      if (!rule.layers.includes(tlayer))
        violations.push(`${where}: src/${layer} may not import src/${tlayer}`);
    } else if (!rule.packages) {
      violations.push(`${where}: src/${layer} may not import packages (it must run in a browser)`);
    }
  }
}

if (violations.length > 0) {
  for (const v of violations) console.error(`layering: ${v}`);
  console.error(`layering: ${violations.length} violation(s) of architecture §1`);
  process.exit(1);
}
console.log('layering: ok');
