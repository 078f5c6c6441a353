// The validated, resolved and frozen configuration (SPEC §2).
// Produced only by config/load.ts; every other module reads this shape and never raw YAML.

export type PoolMode = 'transaction' | 'session';
export type UpstreamTlsMode = 'disable' | 'require' | 'verify-full';
export type HbaType = 'local' | 'host' | 'hostssl' | 'hostnossl';

export interface Endpoint {
  readonly host: string;
  readonly port: number;
}

export interface TlsConfig {
  readonly cert: string; // PEM file paths, resolved relative to the config file's folder
  readonly key: string;
  readonly ca?: string;
  readonly crl?: string;
  readonly min_version: 'TLSv1.2' | 'TLSv1.3';
}

export interface UpstreamConfig {
  readonly tls: { readonly mode: UpstreamTlsMode; readonly ca?: string };
  readonly send_proxy_protocol: boolean;
  readonly require_primary: boolean;
  readonly health_check: {
    readonly interval_ms: number;
    readonly timeout_ms: number;
    /** Database the probe logs in to. */
    readonly database: string;
    /** server_roles entry the probe logs in as; default: the first one. */
    readonly server_role?: string;
  };
}

export interface PoolConfig {
  readonly mode: PoolMode;
  readonly size: number;
  readonly acquire_timeout_ms: number;
  readonly server_idle_timeout_ms: number;
  readonly idle_transaction_timeout_ms: number;
  readonly affinity_ms: number;
  readonly max_sticky_per_user: number;
  readonly sticky_idle_timeout_ms: number;
}

export interface UserConfig {
  readonly name: string;
  readonly secret?: string; // SCRAM-SHA-256$iter:salt$StoredKey:ServerKey (resolved)
  readonly server_role: string;
  readonly pins: Readonly<Record<string, string>>; // templates, resolved at login
  readonly valid_until?: Date;
}

export interface ServerRoleConfig {
  readonly name: string;
  readonly password: string; // resolved
}

export interface CertMapEntry {
  readonly cn: string;
  readonly user: string;
}

export interface HbaRuleConfig {
  readonly type: HbaType;
  readonly database: string; // comma list as in pg_hba.conf ("all", "sameuser", "replication", names)
  readonly user: string;
  readonly address?: string; // "all", CIDR, or a plain address (then mask required in pg_hba syntax)
  readonly method: string;
  readonly line?: number; // source line in the YAML file, for `hba explain`
}

export interface AuditConfig {
  readonly destination: string; // "stdout" or a file path
  readonly ddl: boolean;
  readonly connections: boolean;
  readonly on_failure: 'continue' | 'refuse';
}

export interface LimitsConfig {
  readonly max_clients: number;
  readonly startup_timeout_ms: number;
  readonly max_message_bytes: number;
  readonly max_prepared_bytes: number;
  readonly auth_failures: { readonly max: number; readonly window_s: number; readonly lockout_s: number };
}

export interface Config {
  readonly listen: readonly Endpoint[];
  readonly proxy_protocol?: { readonly trusted: readonly string[] };
  readonly tls?: TlsConfig;
  readonly upstreams: readonly Endpoint[];
  readonly upstream: UpstreamConfig;
  readonly pool: PoolConfig;
  readonly users: readonly UserConfig[];
  readonly server_roles: readonly ServerRoleConfig[];
  readonly cert_map: readonly CertMapEntry[];
  readonly hba?: readonly HbaRuleConfig[];
  readonly hba_file?: string;
  readonly pinning: { readonly variables: readonly string[] };
  readonly audit: AuditConfig;
  readonly metrics?: Endpoint;
  readonly limits: LimitsConfig;
  readonly log_level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace';
  readonly workers: number;
  readonly shutdown_timeout_ms: number;
  /** Absolute path of the file this config came from (undefined when built from an object). */
  readonly source?: string;
}
