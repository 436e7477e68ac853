#!/usr/bin/env node
/**
 * The `guestmem` command. Errors are one line and a non-zero exit; `--debug` shows the stack.
 */
import { Command } from 'commander';
import { runHostDemo } from './demo.js';

const program = new Command();
program
  .name('guestmem')
  .description("KVM's fd-based guest memory: an executable model of the host and KVM, and the real /dev/kvm")
  .option('--debug', 'show stack traces on errors');

program
  .command('demo')
  .description('a short tour of the modelled host memory: memfd, mappings, notifiers, hole punching, CoW')
  .action(() => runHostDemo());

try {
  await program.parseAsync(process.argv);
} catch (e) {
  const debug = program.opts<{ debug?: boolean }>().debug === true;
  console.error(
    debug && e instanceof Error ? e.stack : `guestmem: ${e instanceof Error ? e.message : String(e)}`,
  );
  process.exitCode = 1;
}
