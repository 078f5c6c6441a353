// Everything a session needs from the loaded configuration, prepared once per load:
// users with parsed secrets, HBA rules, pools, cancel keys. Swapped whole on reload.

import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Config, UserConfig } from '../config/types.js';
import { parseScramSecret, type MockScram, type ScramSecret } from '../auth/scram.js';
import { mockScram } from '../auth/mock.js';
import { parseHbaFile, rulesFromConfig } from '../hba/parse.js';
import { cidrContains, clientNetwork, maxPrefix, parseClientAddress, parseIpAddress, type CidrMatcher, type HbaRule } from '../hba/rules.js';
import { PoolRegistry } from '../pool/registry.js';
import { LockoutTracker } from '../auth/lockout.js';
import { ParserCooldown } from '../policy/parser-cooldown.js';
import { PolicyClassifier } from '../policy/classify.js';
import { TlsTerminator } from '../tls/terminate.js';
import { Audit } from '../audit/audit.js';
import { Metrics } from '../metrics/metrics.js';
import { CancelRegistry } from '../session/cancel.js';
import { buildUpstreamTransport, type UpstreamTransport } from '../upstream/dial.js';

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

/** Everything a reload replaces, built in full before anything is swapped. */
interface Generation {
  readonly config: Config;
  readonly users: ReadonlyMap<string, RuntimeUser>;
  readonly hba: readonly HbaRule[];
  readonly policy: PolicyClassifier;
  readonly tls: TlsTerminator | null;
  /** Peers whose PROXY protocol header is believed (proxy_protocol.trusted); null: feature off. */
  readonly trustedProxies: readonly CidrMatcher[] | null;
  readonly upstreamTransport: UpstreamTransport;
  /** Unknown users' fake salt key and iteration count, derived from this config. */
  readonly mock: MockScram;
}

/** Builds a generation from a config; throws (and changes nothing) when any part is unusable. */
function buildGeneration(config: Config): Generation {
  const users = new Map<string, RuntimeUser>();
  for (const user of config.users) users.set(user.name, { config: user, secret: user.secret ? parseScramSecret(user.secret) : null });
  // A fresh context from the files: new handshakes use it, sessions already on TLS keep theirs.
  const tls = config.tls ? new TlsTerminator(config.tls) : null;
  const trustedProxies = config.proxy_protocol ? config.proxy_protocol.trusted.map(toCidr) : null;
  const upstreamTransport = buildUpstreamTransport(config);
  const mock = mockScram(config);
  return { config, users, hba: loadRules(config), policy: new PolicyClassifier(config.pinning.variables, { serverRoles: config.server_roles.map((r) => r.name) }), tls, trustedProxies, upstreamTransport, mock };
}

/** `10.0.0.0/8` or a plain address (a /32 or /128); validated by the config loader. IPv4-mapped entries match IPv4 peers, as in hba rules. */
function toCidr(entry: string): CidrMatcher {
  const [ip, bits] = entry.split('/');
  const addr = parseIpAddress(ip!);
  if (addr === null) throw new Error(`proxy_protocol.trusted: invalid address ${entry}`);
  return clientNetwork(addr, bits === undefined ? maxPrefix(addr.family) : Number(bits));
}

export class Runtime {
  private gen: Generation;
  /** 1 at start, +1 per successful reload. */
  generation = 1;
  readonly pools: PoolRegistry;
  readonly cancels = new CancelRegistry();
  readonly lockout: LockoutTracker;
  /** Users whose text faulted the policy parser lately (per process). */
  readonly parserCooldown = new ParserCooldown();
  readonly metrics: Metrics;
  readonly audit: Audit;
  clients = 0;

  constructor(
    config: Config,
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
    this.gen = buildGeneration(config);
    this.lockout = new LockoutTracker(config.limits.auth_failures);
    this.pools = new PoolRegistry(config, logger, this.metrics, this.gen.upstreamTransport);
  }

  get config(): Config {
    return this.gen.config;
  }
  get users(): ReadonlyMap<string, RuntimeUser> {
    return this.gen.users;
  }
  /**
   * What unknown users' fake SCRAM salt and iteration count come from. Derived from the config
   * (src/auth/mock.ts), not drawn at random per process: every worker, a replaced worker and a
   * restarted instance must answer an unknown name with the same salt, as a known user always
   * gets its one real salt, or comparing logins tells unknown names from known ones.
   */
  get fakeSaltKey(): MockScram {
    return this.gen.mock;
  }
  get hba(): readonly HbaRule[] {
    return this.gen.hba;
  }
  /** Decides, per statement, whether it would change a pinned variable. */
  get policy(): PolicyClassifier {
    return this.gen.policy;
  }
  /** Client-facing TLS, when configured. */
  get tls(): TlsTerminator | null {
    return this.gen.tls;
  }

  get proxyProtocolEnabled(): boolean {
    return this.gen.trustedProxies !== null;
  }

  /** Does a PROXY header from this peer count? null: PROXY protocol is not configured. */
  proxyHeaderTrusted(peer: string): boolean | null {
    const trusted = this.gen.trustedProxies;
    if (trusted === null) return null;
    const addr = parseClientAddress(peer);
    return addr !== null && trusted.some((m) => cidrContains(m, addr));
  }

  /**
   * Swaps in a new configuration: users, rules, pins, cert_map, certificates, upstreams,
   * pool limits, lockout policy, audit settings. Throws before changing anything if a part
   * cannot be built. Returns the settings that only a restart can change.
   */
  apply(config: Config): string[] {
    const next = buildGeneration(config);
    const prev = this.gen.config;
    const needsRestart: string[] = [];
    if (JSON.stringify(prev.listen) !== JSON.stringify(config.listen)) needsRestart.push('listen');
    if (JSON.stringify(prev.metrics) !== JSON.stringify(config.metrics)) needsRestart.push('metrics');
    if (prev.workers !== config.workers) needsRestart.push('workers');
    this.gen = next;
    this.generation++;
    this.lockout.setPolicy(config.limits.auth_failures);
    this.pools.setConfig(config, next.upstreamTransport);
    this.audit.reconfigure(config.audit);
    return needsRestart;
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
