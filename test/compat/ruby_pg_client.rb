# ruby-pg through pgbastion: every step of the compatibility matrix. Settings in PGB_* env;
# prints one JSON line per step: {"step", "status": ok|error|na, "observed"|"error"|"reason"}.

require 'json'
require 'pg'

RUN = ENV.fetch('PGB_RUN')
# Markers naming the run: a step finds its own statements in pg_prepared_statements (where,
# in transaction mode, statements of earlier clients may remain) without matching itself.
PREP_MARKER = "/*compat_prep_marker #{RUN}*/".freeze
PREP_CHECK = "SELECT count(*)::int, string_agg(name, ',') FROM pg_prepared_statements " \
             "WHERE statement LIKE '%' || 'compat' || '_prep_' || 'marker ' || '#{RUN}' || '%'".freeze

FREE_MARKER = "/*compat_free_marker #{RUN}*/".freeze
FREE_CHECK = "SELECT count(*)::int FROM pg_prepared_statements " \
             "WHERE statement LIKE '%' || 'compat' || '_free_' || 'marker ' || '#{RUN}' || '%'".freeze

class NotApplicable < StandardError; end

def connect(extra = {})
  PG.connect({
    host: ENV.fetch('PGB_HOST', '127.0.0.1'), port: ENV.fetch('PGB_PORT'), dbname: 'postgres',
    user: ENV.fetch('PGB_USER'), password: ENV.fetch('PGB_PASSWORD'), sslmode: 'require',
    connect_timeout: '10', application_name: "compat-#{RUN}"
  }.merge(extra).compact)
end

def sqlstate(e)
  e.respond_to?(:result) && e.result ? e.result.error_field(PG::PG_DIAG_SQLSTATE) : nil
end

def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)

$c = nil

def count_items
  $c.exec_params('SELECT count(*)::int FROM compat_items WHERE run = $1', [RUN]).getvalue(0, 0).to_i
end

def rls_state(conn)
  tenant = conn.exec("SELECT current_setting('app.tenant_id')").getvalue(0, 0)
  rows = conn.exec('SELECT tenant FROM compat_rls').column_values(0)
  [tenant, rows.uniq.sort, rows.length]
end

STEPS = {
  'tls_scram_login' => lambda {
    $c = connect
    { current_user: $c.exec('SELECT current_user').getvalue(0, 0), ssl: $c.ssl_in_use?,
      driver: "ruby-pg #{PG::VERSION}, libpq #{PG.library_version}, Ruby #{RUBY_VERSION}" }
  },
  'cert_login' => lambda {
    cc = connect(user: ENV.fetch('PGB_CERT_USER'), password: nil, host: 'localhost', hostaddr: '127.0.0.1',
                 sslmode: 'verify-full', sslrootcert: ENV.fetch('PGB_CA'), sslcert: ENV.fetch('PGB_CERT'),
                 sslkey: ENV.fetch('PGB_KEY'))
    begin
      r = cc.exec("SELECT current_user, current_setting('app.tenant_id')")
      { current_user: r.getvalue(0, 0), tenant: r.getvalue(0, 1), ssl: cc.ssl_in_use? }
    ensure
      cc.close
    end
  },
  'simple_query' => lambda {
    r = $c.exec("SELECT 1 + 1, 'hello'")
    { value: r.getvalue(0, 0).to_i, text: r.getvalue(0, 1), note: 'exec (simple protocol)' }
  },
  'param_query' => lambda {
    r = $c.exec_params("SELECT $1::int + 1, $2::text || '-ok'", [41, 'wörld'])
    { value: r.getvalue(0, 0).to_i, text: r.getvalue(0, 1), note: 'exec_params (extended protocol)' }
  },
  'prepared_repeat' => lambda {
    p = connect
    begin
      p.prepare('compat_p', "SELECT #{PREP_MARKER} $1::int * 2, current_setting('app.tenant_id'), pg_backend_pid()")
      n = 25
      correct = prepared = 0
      backends = {}
      names = {}
      n.times do |i|
        p.transaction do
          r = p.exec_prepared('compat_p', [i])
          correct += 1 if r.getvalue(0, 0).to_i == 2 * i && r.getvalue(0, 1) == 'a'
          backends[r.getvalue(0, 2)] = true
          chk = p.exec(PREP_CHECK)
          prepared += 1 if chk.getvalue(0, 0).to_i.positive?
          (chk.getvalue(0, 1) || '').split(',').each { |nm| names[nm] = true }
        end
      end
      { iterations: n, correct: correct, backends: backends.size, prepared_in: prepared, names: names.keys.sort,
        note: 'prepare + exec_prepared, one transaction each' }
    ensure
      p.close
    end
  },
  'prepared_free' => lambda {
    # ruby-pg (libpq < 17) frees a prepared statement with SQL DEALLOCATE.
    f = connect
    begin
      f.prepare('compat_f', "SELECT #{FREE_MARKER} $1::int")
      2.times { |i| f.exec_prepared('compat_f', [i]) }
      free_error = check_state = remaining = nil
      f.exec('BEGIN')
      f.exec_prepared('compat_f', [3])
      begin
        f.exec('DEALLOCATE compat_f')
      rescue PG::Error => e
        free_error = "#{sqlstate(e)} #{e.message.strip}"
      end
      begin
        remaining = f.exec(FREE_CHECK).getvalue(0, 0).to_i
      rescue PG::Error => e
        check_state = sqlstate(e)
      end
      f.exec('COMMIT')
      { free_error: free_error, check_sqlstate: check_state, remaining: remaining, note: 'SQL DEALLOCATE <name>' }
    ensure
      f.close
    end
  },
  'tx_commit' => lambda {
    $c.transaction do |conn|
      conn.exec_params("INSERT INTO compat_items (run, k, v) VALUES ($1, 1, 'one'), ($1, 2, 'two')", [RUN])
    end
    { count: count_items }
  },
  'tx_rollback' => lambda {
    before = count_items
    $c.exec('BEGIN')
    $c.exec_params("INSERT INTO compat_items (run, k, v) VALUES ($1, 3, 'three')", [RUN])
    inside = count_items
    $c.exec('ROLLBACK')
    { before: before, inside: inside, after: count_items }
  },
  'error_recovery' => lambda {
    first = in_failed = nil
    begin
      $c.exec('SELECT 1/0')
    rescue PG::Error => e
      first = sqlstate(e)
    end
    $c.exec('BEGIN')
    begin
      $c.exec('SELECT 1/0')
    rescue PG::Error
      nil
    end
    begin
      $c.exec('SELECT 1')
    rescue PG::Error => e
      in_failed = sqlstate(e)
    end
    $c.exec('ROLLBACK')
    { sqlstate: first, in_failed_tx: in_failed, after: $c.exec('SELECT 1').getvalue(0, 0).to_i }
  },
  'copy_in' => lambda {
    $c.copy_data('COPY compat_copy (run, n, t) FROM STDIN') do
      (1..1000).each { |i| $c.put_copy_data("#{RUN}\t#{i}\tt#{i}\n") }
    end
    r = $c.exec_params('SELECT count(*)::int, sum(n)::int FROM compat_copy WHERE run = $1', [RUN])
    { count: r.getvalue(0, 0).to_i, sum: r.getvalue(0, 1).to_i, note: 'copy_data + put_copy_data' }
  },
  'copy_out' => lambda {
    lines = []
    $c.copy_data("COPY (SELECT g, 'x' || g FROM generate_series(1, 1000) g) TO STDOUT") do
      while (row = $c.get_copy_data)
        lines << row.chomp
      end
    end
    { lines: lines.length, first: lines.first, last: lines.last, note: 'copy_data + get_copy_data' }
  },
  'large_result' => lambda {
    vals = $c.exec('SELECT g FROM generate_series(1, 100000) g').column_values(0)
    { rows: vals.length, sum: vals.sum(&:to_i) }
  },
  'cancel' => lambda {
    at = nil
    th = Thread.new do
      sleep 0.5
      at = now
      $c.cancel
    end
    start = now
    state = nil
    begin
      $c.exec('SELECT pg_sleep(10)')
    rescue PG::Error => e
      state = sqlstate(e)
    end
    finish = now
    th.join
    { sqlstate: state, total_ms: ((finish - start) * 1000).round, after_cancel_ms: at && ((finish - at) * 1000).round,
      after: $c.exec('SELECT 1').getvalue(0, 0).to_i, note: 'Connection#cancel from another thread' }
  },
  'listen_notify' => lambda {
    l = connect
    n = connect
    begin
      channel = "compat_#{RUN}"
      l.exec("LISTEN #{channel}")
      n.exec("NOTIFY #{channel}, 'hello-#{RUN}'")
      got = nil
      l.wait_for_notify(5) { |ch, _pid, payload| got = [ch, payload] }
      { channel: got&.first, payload: got&.last, note: 'wait_for_notify' }
    ensure
      l.close
      n.close
    end
  },
  'pinned_rls' => lambda {
    tenant, tenants, rows = rls_state($c)
    { tenant: tenant, tenants: tenants, rows: rows }
  },
  'tamper_refused' => lambda {
    state = message = param_state = nil
    begin
      $c.exec("SET app.tenant_id = 'x'")
    rescue PG::Error => e
      state = sqlstate(e)
      message = e.message.strip
    end
    begin
      $c.exec_params("SELECT set_config('app.tenant_id', $1, false)", ['x'])
    rescue PG::Error => e
      param_state = sqlstate(e)
    end
    tenant, tenants, rows = rls_state($c)
    { sqlstate: state, message: message, sqlstate_param: param_state, tenant_after: tenant, tenants_after: tenants,
      rows_after: rows }
  }
}.freeze

$stdout.sync = true
STEPS.each do |id, fn|
  started = now
  begin
    observed = fn.call
    puts JSON.generate({ step: id, status: 'ok', observed: observed, ms: ((now - started) * 1000).round })
  rescue NotApplicable => e
    puts JSON.generate({ step: id, status: 'na', reason: e.message })
  rescue StandardError, ScriptError => e
    puts JSON.generate({ step: id, status: 'error', ms: ((now - started) * 1000).round,
                         error: { sqlstate: sqlstate(e), message: e.message.to_s.strip, type: e.class.name,
                                  trace: (e.backtrace || []).first(10).join("\n") } })
  end
end
$c&.close
