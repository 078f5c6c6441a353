// Everything a session needs from the loaded configuration, prepared once per load:
// users with parsed secrets, HBA rules, pools, cancel keys. Swapped whole on reload.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Config, UserConfig } from '../config/types.js';
import { parseScramSecret, type ScramSecret } from '../auth/scram.js';
import { parseHbaFile, rulesFromConfig } from '../hba/parse.js';
import type { HbaRule } from '../hba/rules.js';
import { PoolRegistry } from '../pool/registry.js';
import { LockoutTracker } from '../auth/lockout.js';
import { PolicyClassifier } from '../policy/classify.js';
import { TlsTerminator } from '../tls/terminate.js';
import { Audit } from '../audit/audit.js';
import { Metrics } from '../metrics/metrics.js';
import { CancelRegistry } from '../session/cancel.js';

export interface RuntimeOptions {
  /** Read at scrape time: client connections and server connections by state. */
  sample?: () => { clients: Record<string, number>; servers: Record<string, number> };
  /** Where audit events go instead of audit.destination (tests capture them). */
  auditStream?: NodeJS.WritableStream;
}

export interface RuntimeUser {
  readonly config: UserConfig;
  readonly secret: ScramSecret | null;
}

export class Runtime {
  readonly users = new Map<string, RuntimeUser>();
  readonly hba: readonly HbaRule[];
  readonly pools: PoolRegistry;
  readonly cancels = new CancelRegistry();
  readonly lockout: LockoutTracker;
  /** Decides, per statement, whether it would change a pinned variable. */
  readonly policy: PolicyClassifier;
  /** Client-facing TLS, when configured. */
  readonly tls: TlsTerminator | null;
  readonly metrics: Metrics;
  readonly audit: Audit;
  /** Per-process key that derives stable fake SCRAM salts for unknown users. */
  readonly fakeSaltKey = randomBytes(32);
  clients = 0;

  constructor(
    readonly config: Config,
    readonly logger: Logger,
    opts: RuntimeOptions = {},
  ) {
    this.metrics = new Metrics(opts.sample ?? (() => ({ clients: {}, servers: {} })));
    this.audit = new Audit(
      config.audit,
      (err) => {
        logger.error({ err: err.message }, 'audit destination failed');
        this.metrics.auditFailures.inc();
      },
      opts.auditStream,
    );
    for (const user of config.users) {
      this.users.set(user.name, { config: user, secret: user.secret ? parseScramSecret(user.secret) : null });
    }
    this.hba = loadRules(config);
    this.lockout = new LockoutTracker(config.limits.auth_failures);
    this.policy = new PolicyClassifier(config.pinning.variables);
    this.tls = config.tls ? new TlsTerminator(config.tls) : null;
    this.pools = new PoolRegistry(config, logger, this.metrics);
  }
}

export function loadRules(config: Config): HbaRule[] {
  if (config.hba_file) {
    const { rules, errors } = parseHbaFile(readFileSync(config.hba_file, 'utf8'), config.hba_file);
    if (errors.length > 0) throw new Error(`${config.hba_file}:${errors[0]!.line}: ${errors[0]!.message}`);
    return rules;
  }
  // No rules at all means default deny (`check` warns about it).
  const { rules, errors } = rulesFromConfig(config.hba ?? [], config.source ?? 'config');
  if (errors.length > 0) throw new Error(`hba[${errors[0]!.index}]: ${errors[0]!.message}`);
  return rules;
}
