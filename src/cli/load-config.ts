// Config loading as the long-running commands report it: every problem on stderr, null on failure.

import { ConfigError, formatProblem, loadConfigFile } from '../config/load.js';
import type { Config } from '../config/types.js';

export async function loadConfigOrReport(file: string, err: (s: string) => void): Promise<Config | null> {
  try {
    return await loadConfigFile(file);
  } catch (e) {
    if (e instanceof ConfigError) {
      err(`pgbastion: invalid config ${file}:`);
      for (const p of e.problems) err(`  ${formatProblem(p)}`);
    } else {
      err(`pgbastion: cannot load ${file}: ${(e as Error).message}`);
    }
    return null;
  }
}
