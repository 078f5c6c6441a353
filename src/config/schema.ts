// JSON Schema (draft-07, for ajv) of the YAML configuration file described in SPEC §2.
// Structure, types, enums and defaults only; cross-references and secrets are checked in load.ts.

/** Every PostgreSQL pg_hba.conf method keyword; load.ts refuses the ones pgbastion does not serve. */
export const HBA_METHODS = [
  'trust',
  'reject',
  'scram-sha-256',
  'md5',
  'password',
  'gss',
  'sspi',
  'ident',
  'peer',
  'pam',
  'ldap',
  'radius',
  'cert',
  'oauth',
] as const;

/** The subset of HBA_METHODS that pgbastion can actually enforce. */
export const SERVED_HBA_METHODS: readonly string[] = ['trust', 'reject', 'scram-sha-256', 'cert'];

// Custom annotation keyword: a human sentence shown instead of ajv's "must match pattern ...".
// load.ts registers it with ajv so strict mode accepts it.
export const PATTERN_MESSAGE_KEYWORD = 'patternMessage';

const port = {
  type: 'integer',
  minimum: 0,
  maximum: 65535,
  description: 'TCP port (0 picks a free port, useful in tests).',
};

function endpoint(what: string) {
  return {
    type: 'object',
    description: `${what}: host and port.`,
    additionalProperties: false,
    required: ['host', 'port'],
    properties: {
      host: { type: 'string', minLength: 1, description: 'Host name or IP address.' },
      port,
    },
  };
}

function positiveInt(description: string, dflt?: number, minimum = 1) {
  return dflt === undefined
    ? { type: 'integer', minimum, description }
    : { type: 'integer', minimum, default: dflt, description };
}

const nonEmptyString = (description: string) => ({ type: 'string', minLength: 1, description });

const tlsSchema = {
  type: 'object',
  description: 'Client-facing TLS; when present, SSLRequest is answered S.',
  additionalProperties: false,
  required: ['cert', 'key'],
  properties: {
    cert: nonEmptyString('Server certificate chain (PEM file, relative to the config file).'),
    key: nonEmptyString('Server private key (PEM file, relative to the config file).'),
    ca: nonEmptyString('CA bundle that client certificates must chain to (PEM file).'),
    crl: nonEmptyString('Certificate revocation list for client certificates (PEM file).'),
    min_version: {
      type: 'string',
      enum: ['TLSv1.2', 'TLSv1.3'],
      default: 'TLSv1.2',
      description: 'Lowest TLS protocol version accepted from clients.',
    },
  },
};

const upstreamSchema = {
  type: 'object',
  description: 'How pgbastion connects to the upstream HAProxy endpoints.',
  additionalProperties: false,
  default: {},
  properties: {
    tls: {
      type: 'object',
      description: 'TLS towards the upstream.',
      additionalProperties: false,
      default: {},
      properties: {
        mode: {
          type: 'string',
          enum: ['disable', 'require', 'verify-full'],
          default: 'disable',
          description: 'disable: plain TCP; require: TLS without verification; verify-full: TLS with CA and host name checks.',
        },
        ca: nonEmptyString('CA bundle used to verify the upstream certificate (PEM file).'),
      },
    },
    send_proxy_protocol: {
      type: 'boolean',
      default: false,
      description: 'Send a PROXY v2 header carrying the real client address to HAProxy.',
    },
    require_primary: {
      type: 'boolean',
      default: true,
      description: 'Never hand out a connection to a server in recovery.',
    },
    health_check: {
      type: 'object',
      description: 'Periodic upstream health probing.',
      additionalProperties: false,
      default: {},
      properties: {
        interval_ms: positiveInt('Milliseconds between health checks.', 2000),
        timeout_ms: positiveInt('Milliseconds before a health check counts as failed.', 1000),
        database: { type: 'string', minLength: 1, default: 'postgres', description: 'Database the health check logs in to.' },
        server_role: nonEmptyString('server_roles entry the health check logs in as (default: the first one).'),
      },
    },
  },
};

const poolSchema = {
  type: 'object',
  description: 'Server connection pooling.',
  additionalProperties: false,
  default: {},
  properties: {
    mode: {
      type: 'string',
      enum: ['transaction', 'session'],
      default: 'transaction',
      description: 'When a server connection returns to the pool: after each transaction or at disconnect.',
    },
    size: positiveInt('Server connections per (database, server role).', 20),
    acquire_timeout_ms: positiveInt('Milliseconds a client waits for a server connection.', 5000),
    server_idle_timeout_ms: positiveInt('Milliseconds before an idle server connection is closed.', 600000),
    idle_transaction_timeout_ms: {
      type: 'integer',
      minimum: 0,
      default: 0,
      description:
        'Milliseconds a client may hold a server connection while idle inside a transaction (or with a batch or message ' +
        'half sent) before it is disconnected with FATAL 25P03, as PgBouncer\'s idle_transaction_timeout; 0 = never.',
    },
    affinity_ms: {
      type: 'integer',
      minimum: 0,
      maximum: 1000,
      default: 0,
      description:
        'Transaction pooling: how long the longest-waiting client may be passed over so that a released server connection ' +
        'goes to a client holding its settings and pins (no switching statement) instead; 0 = strict FIFO.',
    },
    max_sticky_per_user: {
      type: 'integer',
      minimum: 0,
      default: 0,
      description:
        'Transaction pooling: how many sessions of one user may be sticky at once (each keeps a server connection of the ' +
        'pool for its session state); a statement that would make one more is refused with 53300. 0 = half of pool.size, ' +
        'at least 1; pool.size or more = no cap.',
    },
    sticky_idle_timeout_ms: {
      type: 'integer',
      minimum: 0,
      default: 0,
      description:
        'Transaction pooling: milliseconds a sticky client (one keeping its server connection for session state) may send ' +
        "nothing between transactions before it is disconnected with FATAL 57P05, as by PostgreSQL's idle_session_timeout; " +
        'its connection is reset and goes back to the pool. 0 = never.',
    },
  },
};

const userSchema = {
  type: 'object',
  description: 'An identity the proxy authenticates.',
  additionalProperties: false,
  required: ['name', 'server_role'],
  properties: {
    name: nonEmptyString('User name clients log in with.'),
    secret: nonEmptyString('SCRAM-SHA-256 verifier, inline (tests only), ${env:NAME} or ${file:PATH}.'),
    server_role: nonEmptyString('Name of the server_roles entry used on the upstream.'),
    pins: {
      type: 'object',
      description: 'Pinned session variables; values may use ${user} ${database} ${cert.cn} ${cert.o} ${cert.ou}.',
      default: {},
      additionalProperties: { type: 'string', description: 'Pinned value template.' },
    },
    valid_until: {
      type: 'string',
      description: 'Date/time after which the user can no longer log in (UTC when no offset is given).',
      pattern: '^\\d{4}-\\d{2}-\\d{2}([Tt ]\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?\\s*([Zz]|[+-]\\d{2}(:?\\d{2})?)?)?$',
      [PATTERN_MESSAGE_KEYWORD]: 'must be a date/time like 2027-12-31T00:00:00Z',
    },
  },
};

const serverRoleSchema = {
  type: 'object',
  description: 'Credentials pgbastion uses on the upstream.',
  additionalProperties: false,
  required: ['name', 'password'],
  properties: {
    name: nonEmptyString('Role name on the upstream server.'),
    password: nonEmptyString('Password for that role, normally ${env:NAME} or ${file:PATH}.'),
  },
};

const certMapSchema = {
  type: 'object',
  description: 'Maps a client certificate CN to a proxy user (pg_ident style).',
  additionalProperties: false,
  required: ['cn', 'user'],
  properties: {
    cn: nonEmptyString('Certificate subject common name.'),
    user: nonEmptyString('Proxy user (users[].name) that this certificate may log in as.'),
  },
};

const hbaRuleSchema = {
  type: 'object',
  description: 'One pg_hba-style rule; the first matching rule decides.',
  additionalProperties: false,
  required: ['type', 'database', 'user', 'method'],
  properties: {
    type: {
      type: 'string',
      enum: ['local', 'host', 'hostssl', 'hostnossl'],
      description: 'Connection type matched, as in pg_hba.conf.',
    },
    database: nonEmptyString('Comma list of database names, "all", "sameuser" or "replication".'),
    user: nonEmptyString('Comma list of user names or "all".'),
    address: nonEmptyString('"all", a CIDR block, an IP address (as /32 or /128) or "ADDRESS MASK"; no host names or samehost/samenet.'),
    method: {
      type: 'string',
      enum: [...HBA_METHODS],
      description: 'Authentication method; pgbastion serves trust, reject, scram-sha-256 and cert.',
    },
  },
  // pg_hba.conf requires an address on every rule except "local" ones.
  if: { properties: { type: { const: 'local' } } },
  else: { required: ['address'] },
};

const auditSchema = {
  type: 'object',
  description: 'The audit trail (JSON lines, separate from the operational log).',
  additionalProperties: false,
  default: {},
  properties: {
    destination: {
      type: 'string',
      minLength: 1,
      default: 'stdout',
      description: '"stdout" or a file path (relative to the config file).',
    },
    ddl: { type: 'boolean', default: true, description: 'Record DDL statements.' },
    connections: { type: 'boolean', default: true, description: 'Record session start, denial and end.' },
    on_failure: {
      type: 'string',
      enum: ['continue', 'refuse'],
      default: 'continue',
      description: 'When the audit trail cannot be written: keep serving, or refuse new work.',
    },
  },
};

const limitsSchema = {
  type: 'object',
  description: 'Resource and abuse limits.',
  additionalProperties: false,
  default: {},
  properties: {
    max_clients: positiveInt('Maximum concurrent client connections.', 10000),
    startup_timeout_ms: positiveInt('Milliseconds a client has to finish TLS, startup and authentication.', 5000),
    max_message_bytes: positiveInt('Largest protocol message accepted from a client, in bytes.', 67108864),
    max_prepared_bytes: positiveInt(
      "Transaction mode: bytes of named prepared statements pgbastion keeps per client (to prepare them again on other server connections); a Parse past it gets ERROR 53200.",
      16777216,
    ),
    auth_failures: {
      type: 'object',
      description: 'Lockout after repeated authentication failures, per source address and per user.',
      additionalProperties: false,
      default: {},
      properties: {
        max: positiveInt('Failures allowed within the window.', 5),
        window_s: positiveInt('Sliding window in seconds.', 60),
        lockout_s: positiveInt('Lockout duration in seconds.', 300),
      },
    },
  },
};

export const configSchema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  $id: 'https://pgbastion.dev/schema/config.json',
  title: 'pgbastion configuration',
  type: 'object',
  additionalProperties: false,
  required: ['upstreams'],
  properties: {
    listen: {
      type: ['object', 'array'],
      description: 'Client listener(s): one {host, port} or a list of them.',
      default: { host: '127.0.0.1', port: 6432 },
      // if/then/else rather than oneOf so errors come only from the branch the value's shape selects.
      if: { type: 'array' },
      then: { type: 'array', minItems: 1, items: endpoint('Listener') },
      else: endpoint('Listener'),
    },
    proxy_protocol: {
      type: 'object',
      description: 'Accept PROXY v1/v2 headers from trusted peers.',
      additionalProperties: false,
      required: ['trusted'],
      properties: {
        trusted: {
          type: 'array',
          description: 'Peers (CIDR blocks or addresses) allowed to send PROXY headers.',
          items: nonEmptyString('CIDR block or IP address.'),
        },
      },
    },
    tls: tlsSchema,
    upstreams: {
      type: 'array',
      description: 'HAProxy endpoints in front of the primary, in order of preference.',
      minItems: 1,
      items: endpoint('Upstream endpoint'),
    },
    upstream: upstreamSchema,
    pool: poolSchema,
    users: { type: 'array', description: 'Identities the proxy authenticates.', default: [], items: userSchema },
    server_roles: {
      type: 'array',
      description: 'Upstream roles and their credentials.',
      default: [],
      items: serverRoleSchema,
    },
    cert_map: {
      type: 'array',
      description: 'Certificate identity to proxy user mapping.',
      default: [],
      items: certMapSchema,
    },
    hba: { type: 'array', description: 'Access rules in order; no match means reject.', items: hbaRuleSchema },
    hba_file: nonEmptyString('Path of a pg_hba.conf-syntax rules file (instead of hba).'),
    pinning: {
      type: 'object',
      description: 'Row-Level-Security session variables pinned per client.',
      additionalProperties: false,
      default: {},
      properties: {
        variables: {
          type: 'array',
          description: 'Customized option names (like app.tenant_id) clients may never set, reset or discard.',
          default: [],
          items: { type: 'string', description: 'Customized option name, prefix.name.' },
        },
      },
    },
    audit: auditSchema,
    metrics: endpoint('Prometheus /metrics, /healthz and /readyz listener'),
    limits: limitsSchema,
    log_level: {
      type: 'string',
      enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace'],
      default: 'info',
      description: 'Operational log verbosity.',
    },
    workers: positiveInt('Number of worker processes.', 1),
    shutdown_timeout_ms: positiveInt(
      'Milliseconds in-flight transactions get to finish on SIGTERM/SIGINT.',
      10000,
      0,
    ),
  },
  // Rules come from exactly one place.
  not: {
    description: 'hba and hba_file are mutually exclusive',
    required: ['hba', 'hba_file'],
  },
} as const;
