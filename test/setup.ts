// Runs before every test file: invariant violations (the model's WARN_ON_ONCE) throw under test.
import { setStrictInvariants } from '../src/core/errno.js';

setStrictInvariants(true);
