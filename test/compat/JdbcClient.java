// pgJDBC through pgbastion: every step of the compatibility matrix. Run as a single-file
// program: java -cp /usr/share/java/postgresql.jar JdbcClient.java (settings in PGB_* env).
// Prints one JSON line per step: {"step", "status": ok|error|na, "observed"|"error"|"reason"}.

import java.io.PrintWriter;
import java.io.StringReader;
import java.io.StringWriter;
import java.lang.reflect.Field;
import java.net.Socket;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.TreeSet;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import javax.net.ssl.SSLSocket;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.copy.CopyManager;
import org.postgresql.core.BaseConnection;
import org.postgresql.core.PGStream;
import org.postgresql.core.QueryExecutorBase;

public class JdbcClient {
  static final Map<String, String> ENV = System.getenv();
  static final String RUN = ENV.get("PGB_RUN");
  // Markers naming the run: a step finds its own statements in pg_prepared_statements (where,
  // in transaction mode, statements of earlier clients may remain) without matching itself.
  static final String PREP_MARKER = "/*compat_prep_marker " + RUN + "*/";
  static final String PREP_CHECK = "SELECT count(*)::int, string_agg(name, ',') FROM pg_prepared_statements "
      + "WHERE statement LIKE '%' || 'compat' || '_prep_' || 'marker ' || '" + RUN + "' || '%'";
  static final String FREE_MARKER = "/*compat_free_marker " + RUN + "*/";
  static final String FREE_CHECK = "SELECT count(*)::int FROM pg_prepared_statements "
      + "WHERE statement LIKE '%' || 'compat' || '_free_' || 'marker ' || '" + RUN + "' || '%'";
  static Connection c;

  interface Step {
    Map<String, Object> run() throws Exception;
  }

  static class NotApplicable extends Exception {
    NotApplicable(String reason) {
      super(reason);
    }
  }

  // ---- plumbing ------------------------------------------------------------------------

  static Connection connectTo(String host, String... kv) throws SQLException {
    Properties p = new Properties();
    p.setProperty("user", ENV.get("PGB_USER"));
    p.setProperty("password", ENV.get("PGB_PASSWORD"));
    p.setProperty("sslmode", "require");
    p.setProperty("ApplicationName", "compat-" + RUN);
    p.setProperty("connectTimeout", "10");
    for (int i = 0; i < kv.length; i += 2) {
      if (kv[i + 1] == null) p.remove(kv[i]);
      else p.setProperty(kv[i], kv[i + 1]);
    }
    return DriverManager.getConnection("jdbc:postgresql://" + host + ":" + ENV.get("PGB_PORT") + "/postgres", p);
  }

  static Connection connect(String... kv) throws SQLException {
    return connectTo(ENV.getOrDefault("PGB_HOST", "127.0.0.1"), kv);
  }

  static Map<String, Object> obs(Object... kv) {
    Map<String, Object> m = new LinkedHashMap<>();
    for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
    return m;
  }

  static Object[] one(Connection conn, String sql) throws SQLException {
    try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
      rs.next();
      Object[] row = new Object[rs.getMetaData().getColumnCount()];
      for (int i = 0; i < row.length; i++) row[i] = rs.getObject(i + 1);
      return row;
    }
  }

  static int intOf(Connection conn, String sql) throws SQLException {
    return ((Number) one(conn, sql)[0]).intValue();
  }

  /** Whether the connection's socket is a TLS socket (pgJDBC has no public API for it). */
  static Object sslInUse(Connection conn) {
    try {
      Object qe = conn.unwrap(BaseConnection.class).getQueryExecutor();
      Field f = QueryExecutorBase.class.getDeclaredField("pgStream");
      f.setAccessible(true);
      Socket s = ((PGStream) f.get(qe)).getSocket();
      return s instanceof SSLSocket;
    } catch (Exception e) {
      return null;
    }
  }

  static String json(Object o) {
    if (o == null) return "null";
    if (o instanceof Boolean || o instanceof Integer || o instanceof Long) return o.toString();
    if (o instanceof Number) return o.toString();
    if (o instanceof Map<?, ?> m) {
      List<String> parts = new ArrayList<>();
      for (Map.Entry<?, ?> e : m.entrySet()) parts.add(json(String.valueOf(e.getKey())) + ":" + json(e.getValue()));
      return "{" + String.join(",", parts) + "}";
    }
    if (o instanceof Collection<?> col) {
      List<String> parts = new ArrayList<>();
      for (Object x : col) parts.add(json(x));
      return "[" + String.join(",", parts) + "]";
    }
    String s = o.toString();
    StringBuilder b = new StringBuilder("\"");
    for (char ch : s.toCharArray()) {
      switch (ch) {
        case '"' -> b.append("\\\"");
        case '\\' -> b.append("\\\\");
        case '\n' -> b.append("\\n");
        case '\r' -> b.append("\\r");
        case '\t' -> b.append("\\t");
        default -> {
          if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
          else b.append(ch);
        }
      }
    }
    return b.append('"').toString();
  }

  static void emit(Map<String, Object> m) {
    System.out.println(json(m));
    System.out.flush();
  }

  static String sqlState(Throwable e) {
    for (Throwable x = e; x != null; x = x.getCause()) if (x instanceof SQLException s && s.getSQLState() != null) return s.getSQLState();
    return null;
  }

  // ---- steps -----------------------------------------------------------------------------

  static Map<String, Object> tlsScramLogin() throws Exception {
    c = connect();
    return obs("current_user", one(c, "SELECT current_user")[0], "ssl", sslInUse(c), "driver",
        "pgJDBC " + c.getMetaData().getDriverVersion() + ", Java " + System.getProperty("java.version"));
  }

  static Map<String, Object> certLogin() throws Exception {
    try (Connection cc = connectTo("localhost", "user", ENV.get("PGB_CERT_USER"), "password", null, "sslmode", "verify-full",
        "sslrootcert", ENV.get("PGB_CA"), "sslcert", ENV.get("PGB_CERT"), "sslkey", ENV.get("PGB_KEY_DER"))) {
      Object[] row = one(cc, "SELECT current_user, current_setting('app.tenant_id')");
      return obs("current_user", row[0], "tenant", row[1], "ssl", sslInUse(cc), "note", "client key as PKCS-8 DER (sslkey)");
    }
  }

  static Map<String, Object> simpleQuery() throws Exception {
    try (Connection s = connect("preferQueryMode", "simple")) {
      Object[] row = one(s, "SELECT 1 + 1, 'hello'");
      return obs("value", row[0], "text", row[1], "note", "preferQueryMode=simple");
    }
  }

  static Map<String, Object> paramQuery() throws Exception {
    try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1, ?::text || '-ok'")) {
      ps.setInt(1, 41);
      ps.setString(2, "wörld");
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        return obs("value", rs.getInt(1), "text", rs.getString(2), "note", "PreparedStatement, extended protocol");
      }
    }
  }

  static Map<String, Object> preparedRepeat() throws Exception {
    try (Connection p = connect("prepareThreshold", "1")) {
      p.setAutoCommit(false);
      int n = 25, correct = 0, prepared = 0;
      TreeSet<Long> backends = new TreeSet<>();
      TreeSet<String> names = new TreeSet<>();
      try (PreparedStatement ps = p.prepareStatement("SELECT " + PREP_MARKER + " ?::int * 2, current_setting('app.tenant_id'), pg_backend_pid()")) {
        for (int i = 0; i < n; i++) {
          ps.setInt(1, i);
          try (ResultSet rs = ps.executeQuery()) {
            rs.next();
            if (rs.getInt(1) == 2 * i && "a".equals(rs.getString(2))) correct++;
            backends.add(rs.getLong(3));
          }
          Object[] chk = one(p, PREP_CHECK);
          if (((Number) chk[0]).intValue() > 0) prepared++;
          if (chk[1] != null) for (String nm : chk[1].toString().split(",")) names.add(nm);
          p.commit();
        }
      }
      return obs("iterations", n, "correct", correct, "backends", backends.size(), "prepared_in", prepared, "names", names,
          "note", "PreparedStatement with prepareThreshold=1, autocommit off, commit after each");
    }
  }

  static Map<String, Object> preparedFree() throws Exception {
    // Without the driver's statement cache, close() really frees the server-side statement.
    try (Connection f = connect("prepareThreshold", "1", "preparedStatementCacheQueries", "0")) {
      PreparedStatement ps = f.prepareStatement("SELECT " + FREE_MARKER + " ?::int");
      for (int i = 0; i < 2; i++) {
        ps.setInt(1, i);
        ps.executeQuery().close();
      }
      f.setAutoCommit(false);
      String freeError = null, checkState = null;
      Integer remaining = null;
      ps.setInt(1, 3);
      ps.executeQuery().close();
      try {
        ps.close(); // a Close message, sent ahead of the next query
      } catch (SQLException e) {
        freeError = e.getSQLState() + " " + e.getMessage();
      }
      try {
        remaining = intOf(f, FREE_CHECK);
      } catch (SQLException e) {
        checkState = e.getSQLState();
      }
      f.commit();
      return obs("free_error", freeError, "check_sqlstate", checkState, "remaining", remaining, "note",
          "PreparedStatement.close() with preparedStatementCacheQueries=0: protocol Close message");
    }
  }

  static int countItems() throws SQLException {
    try (PreparedStatement ps = c.prepareStatement("SELECT count(*)::int FROM compat_items WHERE run = ?")) {
      ps.setString(1, RUN);
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        return rs.getInt(1);
      }
    }
  }

  static void insertItem(int k, String v) throws SQLException {
    try (PreparedStatement ps = c.prepareStatement("INSERT INTO compat_items (run, k, v) VALUES (?, ?, ?)")) {
      ps.setString(1, RUN);
      ps.setInt(2, k);
      ps.setString(3, v);
      ps.executeUpdate();
    }
  }

  static Map<String, Object> txCommit() throws Exception {
    c.setAutoCommit(false);
    try {
      insertItem(1, "one");
      insertItem(2, "two");
      c.commit();
    } finally {
      c.setAutoCommit(true);
    }
    return obs("count", countItems());
  }

  static Map<String, Object> txRollback() throws Exception {
    int before = countItems(), inside;
    c.setAutoCommit(false);
    try {
      insertItem(3, "three");
      inside = countItems();
      c.rollback();
    } finally {
      c.setAutoCommit(true);
    }
    return obs("before", before, "inside", inside, "after", countItems());
  }

  static Map<String, Object> errorRecovery() throws Exception {
    String first = null, inFailed = null;
    try (Statement st = c.createStatement()) {
      try {
        st.execute("SELECT 1/0");
      } catch (SQLException e) {
        first = e.getSQLState();
      }
      c.setAutoCommit(false);
      try {
        try {
          st.execute("SELECT 1/0");
        } catch (SQLException e) {
          // expected
        }
        try {
          st.execute("SELECT 1");
        } catch (SQLException e) {
          inFailed = e.getSQLState();
        }
        c.rollback();
      } finally {
        c.setAutoCommit(true);
      }
    }
    return obs("sqlstate", first, "in_failed_tx", inFailed, "after", intOf(c, "SELECT 1"));
  }

  static Map<String, Object> copyIn() throws Exception {
    StringBuilder data = new StringBuilder();
    for (int i = 1; i <= 1000; i++) data.append(RUN).append('\t').append(i).append("\tt").append(i).append('\n');
    CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
    long copied = cm.copyIn("COPY compat_copy (run, n, t) FROM STDIN", new StringReader(data.toString()));
    try (PreparedStatement ps = c.prepareStatement("SELECT count(*)::int, sum(n)::int FROM compat_copy WHERE run = ?")) {
      ps.setString(1, RUN);
      try (ResultSet rs = ps.executeQuery()) {
        rs.next();
        return obs("count", rs.getInt(1), "sum", rs.getInt(2), "copied", copied, "note", "CopyManager.copyIn");
      }
    }
  }

  static Map<String, Object> copyOut() throws Exception {
    StringWriter w = new StringWriter();
    CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
    cm.copyOut("COPY (SELECT g, 'x' || g FROM generate_series(1, 1000) g) TO STDOUT", w);
    String[] lines = w.toString().split("\n");
    return obs("lines", lines.length, "first", lines[0], "last", lines[lines.length - 1], "note", "CopyManager.copyOut");
  }

  static Map<String, Object> largeResult() throws Exception {
    long rows = 0, sum = 0;
    try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT g FROM generate_series(1, 100000) g")) {
      while (rs.next()) {
        rows++;
        sum += rs.getLong(1);
      }
    }
    return obs("rows", rows, "sum", sum);
  }

  static Map<String, Object> cancel() throws Exception {
    ScheduledExecutorService ex = Executors.newSingleThreadScheduledExecutor();
    AtomicLong at = new AtomicLong();
    String state = null;
    long start, end;
    try (Statement st = c.createStatement()) {
      ex.schedule(() -> {
        at.set(System.nanoTime());
        try {
          st.cancel();
        } catch (SQLException e) {
          // reported through the missing 57014
        }
      }, 500, TimeUnit.MILLISECONDS);
      start = System.nanoTime();
      try {
        st.execute("SELECT pg_sleep(10)");
      } catch (SQLException e) {
        state = e.getSQLState();
      }
      end = System.nanoTime();
    } finally {
      ex.shutdownNow();
    }
    return obs("sqlstate", state, "total_ms", (end - start) / 1_000_000, "after_cancel_ms", at.get() == 0 ? null : (end - at.get()) / 1_000_000,
        "after", intOf(c, "SELECT 1"), "note", "Statement.cancel() from another thread");
  }

  static Map<String, Object> listenNotify() throws Exception {
    try (Connection l = connect(); Connection n = connect()) {
      String channel = "compat_" + RUN;
      try (Statement st = l.createStatement()) {
        st.execute("LISTEN " + channel);
      }
      try (Statement st = n.createStatement()) {
        st.execute("NOTIFY " + channel + ", 'hello-" + RUN + "'");
      }
      PGNotification[] got = l.unwrap(PGConnection.class).getNotifications(5000);
      PGNotification first = got != null && got.length > 0 ? got[0] : null;
      return obs("channel", first == null ? null : first.getName(), "payload", first == null ? null : first.getParameter(),
          "note", "PGConnection.getNotifications(timeout)");
    }
  }

  static Map<String, Object> rlsState() throws SQLException {
    Object tenant = one(c, "SELECT current_setting('app.tenant_id')")[0];
    TreeSet<String> tenants = new TreeSet<>();
    int rows = 0;
    try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery("SELECT tenant FROM compat_rls")) {
      while (rs.next()) {
        rows++;
        tenants.add(rs.getString(1));
      }
    }
    return obs("tenant", tenant, "tenants", tenants, "rows", rows);
  }

  static Map<String, Object> pinnedRls() throws Exception {
    return rlsState();
  }

  static Map<String, Object> tamperRefused() throws Exception {
    String state = null, message = null, paramState = null;
    try (Statement st = c.createStatement()) {
      st.execute("SET app.tenant_id = 'x'");
    } catch (SQLException e) {
      state = e.getSQLState();
      message = e.getMessage();
    }
    try (PreparedStatement ps = c.prepareStatement("SELECT set_config('app.tenant_id', ?, false)")) {
      ps.setString(1, "x");
      ps.executeQuery().close();
    } catch (SQLException e) {
      paramState = e.getSQLState();
    }
    Map<String, Object> after = rlsState();
    return obs("sqlstate", state, "message", message, "sqlstate_param", paramState, "tenant_after", after.get("tenant"),
        "tenants_after", after.get("tenants"), "rows_after", after.get("rows"));
  }

  public static void main(String[] args) throws Exception {
    Map<String, Step> steps = new LinkedHashMap<>();
    steps.put("tls_scram_login", JdbcClient::tlsScramLogin);
    steps.put("cert_login", JdbcClient::certLogin);
    steps.put("simple_query", JdbcClient::simpleQuery);
    steps.put("param_query", JdbcClient::paramQuery);
    steps.put("prepared_repeat", JdbcClient::preparedRepeat);
    steps.put("prepared_free", JdbcClient::preparedFree);
    steps.put("tx_commit", JdbcClient::txCommit);
    steps.put("tx_rollback", JdbcClient::txRollback);
    steps.put("error_recovery", JdbcClient::errorRecovery);
    steps.put("copy_in", JdbcClient::copyIn);
    steps.put("copy_out", JdbcClient::copyOut);
    steps.put("large_result", JdbcClient::largeResult);
    steps.put("cancel", JdbcClient::cancel);
    steps.put("listen_notify", JdbcClient::listenNotify);
    steps.put("pinned_rls", JdbcClient::pinnedRls);
    steps.put("tamper_refused", JdbcClient::tamperRefused);
    for (Map.Entry<String, Step> s : steps.entrySet()) {
      long started = System.nanoTime();
      try {
        Map<String, Object> observed = s.getValue().run();
        emit(obs("step", s.getKey(), "status", "ok", "observed", observed, "ms", (System.nanoTime() - started) / 1_000_000));
      } catch (NotApplicable e) {
        emit(obs("step", s.getKey(), "status", "na", "reason", e.getMessage()));
      } catch (Throwable e) {
        StringWriter trace = new StringWriter();
        e.printStackTrace(new PrintWriter(trace));
        String t = trace.toString();
        emit(obs("step", s.getKey(), "status", "error", "ms", (System.nanoTime() - started) / 1_000_000, "error",
            obs("sqlstate", sqlState(e), "message", String.valueOf(e.getMessage()), "type", e.getClass().getName(), "trace",
                t.length() > 1500 ? t.substring(0, 1500) : t)));
      }
    }
    if (c != null) c.close();
  }
}
