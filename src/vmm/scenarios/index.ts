/** The shipped scenarios, in the order `listScenarios()` gives them (the default first). */

import type { Scenario } from '../scenario.js';
import { confidentialBoot } from './confidential_boot.js';
import { dirtyTracking } from './dirty_tracking.js';
import { gmemLifetimes } from './gmem_lifetimes.js';
import { memfdPrivate } from './memfd_private.js';
import { pciScan } from './pci_scan.js';

export const SHIPPED_SCENARIOS: readonly Scenario[] = [
  confidentialBoot,
  pciScan,
  gmemLifetimes,
  memfdPrivate,
  dirtyTracking,
];

export const DEFAULT_SCENARIO = confidentialBoot.name;
