// Prometheus metrics (SPEC §5): one prom-client Registry per running proxy, so several can
// live in one process (tests). Label sets are bounded: reasons, methods and states from
// fixed lists, rule indexes, configured upstreams; never user names or client addresses.

import client from 'prom-client';
import { FastCounter } from './fast-counter.js';
import { FastHistogram } from './fast-histogram.js';

export type DenyReason = 'hba' | 'auth' | 'tls' | 'lockout' | 'limit' | 'protocol' | 'startup' | 'upstream';

export class Metrics {
  readonly registry = new client.Registry();

  readonly connections = new client.Counter({
    name: 'pgbastion_connections_total',
    help: 'Client connection outcomes: started, or denied with a reason.',
    labelNames: ['outcome', 'reason'] as const,
    registers: [this.registry],
  });
  readonly auth = new client.Counter({
    name: 'pgbastion_auth_total',
    help: 'Client authentication results by method.',
    labelNames: ['method', 'result'] as const,
    registers: [this.registry],
  });
  readonly hba = new client.Counter({
    name: 'pgbastion_hba_decisions_total',
    help: 'HBA decisions by matching rule index ("none" when no rule matched).',
    labelNames: ['rule', 'decision'] as const,
    registers: [this.registry],
  });
  readonly lockouts = new client.Counter({
    name: 'pgbastion_auth_lockouts_total',
    help: 'Login attempts refused because the address or user is locked out.',
    labelNames: ['by'] as const,
    registers: [this.registry],
  });
  readonly clients: client.Gauge<'state'>;
  readonly serverConnections: client.Gauge<'state'>;
  readonly poolWait = new FastHistogram(
    'pgbastion_pool_wait_seconds',
    'Time a client waited for a server connection.',
    [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5],
    this.registry,
  );
  readonly transactions = new FastCounter('pgbastion_transactions_total', 'Transactions completed (ReadyForQuery back to idle).', this.registry);
  readonly queryDuration = new FastHistogram(
    'pgbastion_query_duration_seconds',
    'Time from a Query or Sync reaching the server to its ReadyForQuery.',
    [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    this.registry,
  );
  readonly transactionDuration = new FastHistogram(
    'pgbastion_transaction_duration_seconds',
    "Time from a transaction's first statement reaching the server to its ReadyForQuery back to idle (one statement outside a block: that statement).",
    [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30],
    this.registry,
  );
  readonly ddl = new client.Counter({
    name: 'pgbastion_ddl_statements_total',
    help: 'Audited DDL statements by class (ddl, role, dynamic, unparsed) and outcome.',
    labelNames: ['class', 'outcome'] as const,
    registers: [this.registry],
  });
  readonly blocked = new client.Counter({
    name: 'pgbastion_blocked_statements_total',
    help: 'Statements refused by the pinning policy.',
    registers: [this.registry],
  });
  private readonly settingsSwitchesByForm = new FastCounter(
    'pgbastion_settings_switches_total',
    "Server connections switched to a client's settings and pins, by form: inline (SETs riding with the client's own Query or batch) or separate (a hidden statement of their own).",
    this.registry,
    { name: 'form', values: ['inline', 'separate'] as const },
  );
  /** Bound once: a switch is counted on the lease path. */
  readonly settingsSwitches = {
    inline: this.settingsSwitchesByForm.child('inline'),
    separate: this.settingsSwitchesByForm.child('separate'),
  };

  /** Switches of both forms so far (tests). */
  async settingsSwitchCount(): Promise<{ inline: number; separate: number }> {
    return { inline: this.settingsSwitchesByForm.value('inline'), separate: this.settingsSwitchesByForm.value('separate') };
  }
  readonly sticky = new client.Counter({
    name: 'pgbastion_sticky_sessions_total',
    help: 'Transaction-mode clients pinned to their server connection, by reason.',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly upstreamUp = new client.Gauge({
    name: 'pgbastion_upstream_up',
    aggregator: 'max', // workers: usable if any worker finds it usable
    help: '1 when the last health check or connection attempt found this upstream usable (a primary, with require_primary).',
    labelNames: ['upstream'] as const,
    registers: [this.registry],
  });
  readonly upstreamFailovers = new client.Counter({
    name: 'pgbastion_upstream_failovers_total',
    help: 'Times new server connections moved from one configured upstream to another.',
    registers: [this.registry],
  });
  readonly tlsHandshakes = new client.Counter({
    name: 'pgbastion_tls_handshakes_total',
    help: 'Client TLS handshakes by result.',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly auditFailures = new client.Counter({
    name: 'pgbastion_audit_write_failures_total',
    help: 'Failures of the audit destination.',
    registers: [this.registry],
  });
  readonly configReloads = new client.Counter({
    name: 'pgbastion_config_reloads_total',
    help: 'Configuration reloads by result.',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly configGeneration = new client.Gauge({
    name: 'pgbastion_config_generation',
    aggregator: 'min', // workers: the oldest configuration still serving
    help: 'Generation of the loaded configuration (1 at start, +1 per successful reload).',
    registers: [this.registry],
  });

  /** `sample` is read at scrape time: client states and pool connection states. */
  constructor(sample: () => { clients: Record<string, number>; servers: Record<string, number> }) {
    const registers = [this.registry];
    this.clients = new client.Gauge({
      name: 'pgbastion_client_connections',
      help: 'Client connections by state.',
      labelNames: ['state'] as const,
      registers,
      collect() {
        for (const [state, n] of Object.entries(sample().clients)) this.set({ state }, n);
      },
    });
    this.serverConnections = new client.Gauge({
      name: 'pgbastion_pool_server_connections',
      help: 'Server connections by state, over all pools.',
      labelNames: ['state'] as const,
      registers,
      collect() {
        for (const [state, n] of Object.entries(sample().servers)) this.set({ state }, n);
      },
    });
    client.collectDefaultMetrics({ register: this.registry });
    this.configGeneration.set(1);
  }

  denied(reason: DenyReason): void {
    this.connections.inc({ outcome: 'denied', reason });
  }
}
