// What the config-reading commands share: the -c/--config option, the default path, and config
// loading as the long-running commands report it (every problem on stderr, null on failure).

import { ConfigError, formatProblem, loadConfigFile } from '../config/load.js';
import type { Config } from '../config/types.js';

const DEFAULT_CONFIG = 'config/pgbastion.yaml';

/** $PGBASTION_CONFIG, else config/pgbastion.yaml (SPEC §1). */
export function defaultConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.PGBASTION_CONFIG || DEFAULT_CONFIG;
}

export type ConfigArgs = { help: true } | { help: false; file: string } | { error: string };

/**
 * The options of `check` and `start`: `-c FILE`, `--config FILE`, `--config=FILE`, `-h`/`--help`.
 * Anything else is an error, so a mistyped option never silently runs the default config.
 */
export function parseConfigArgs(args: readonly string[], env: NodeJS.ProcessEnv = process.env): ConfigArgs {
  let file: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '-h' || arg === '--help') return { help: true };
    if (arg === '-c' || arg === '--config') {
      const value = args[++i];
      if (value === undefined || value === '') return { error: `${arg} needs a file name` };
      file = value;
    } else if (arg.startsWith('--config=')) {
      file = arg.slice('--config='.length);
      if (!file) return { error: '--config needs a file name' };
    } else {
      return { error: `unknown argument "${arg}"` };
    }
  }
  return { help: false, file: file ?? defaultConfigPath(env) };
}

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
