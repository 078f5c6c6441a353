#!/usr/bin/perl
# DBD::Pg through pgbastion: every step of the compatibility matrix. Settings in PGB_* env;
# prints one JSON line per step: {"step", "status": ok|error|na, "observed"|"error"|"reason"}.
use strict;
use warnings;
use utf8;
use DBI;
use DBD::Pg qw(:async);
use IO::Select;
use JSON::PP;
use Time::HiRes qw(time sleep);

my $RUN = $ENV{PGB_RUN};
# Markers naming the run: a step finds its own statements in pg_prepared_statements (where,
# in transaction mode, statements of earlier clients may remain) without matching itself.
my $PREP_MARKER = "/*compat_prep_marker $RUN*/";
my $PREP_CHECK = "SELECT count(*)::int, string_agg(name, ',') FROM pg_prepared_statements "
  . "WHERE statement LIKE '%' || 'compat' || '_prep_' || 'marker ' || '$RUN' || '%'";
my $FREE_MARKER = "/*compat_free_marker $RUN*/";
my $FREE_CHECK = "SELECT count(*)::int FROM pg_prepared_statements "
  . "WHERE statement LIKE '%' || 'compat' || '_free_' || 'marker ' || '$RUN' || '%'";
my $JSON = JSON::PP->new->utf8->canonical;
$| = 1;

sub connect_db {
  my (%o) = @_;
  my $user = exists $o{user} ? delete $o{user} : $ENV{PGB_USER};
  my $password = exists $o{password} ? delete $o{password} : $ENV{PGB_PASSWORD};
  my %dsn = (host => $ENV{PGB_HOST} // '127.0.0.1', port => $ENV{PGB_PORT}, dbname => 'postgres', sslmode => 'require',
    connect_timeout => 10, application_name => "compat-$RUN", %o);
  my $dsn = join ';', map { "$_=$dsn{$_}" } sort keys %dsn;
  return DBI->connect("dbi:Pg:$dsn", $user, $password // '', { RaiseError => 1, PrintError => 0, AutoCommit => 1 });
}

my $c;

sub count_items { return 0 + $c->selectrow_array('SELECT count(*)::int FROM compat_items WHERE run = ?', undef, $RUN) }

sub rls_state {
  my ($dbh) = @_;
  my ($tenant) = $dbh->selectrow_array("SELECT current_setting('app.tenant_id')");
  my $rows = $dbh->selectcol_arrayref('SELECT tenant FROM compat_rls');
  my %seen = map { $_ => 1 } @$rows;
  return ($tenant, [sort keys %seen], scalar @$rows);
}

my @steps = (
  tls_scram_login => sub {
    $c = connect_db();
    my ($user) = $c->selectrow_array('SELECT current_user');
    # DBD::Pg does not expose whether the connection uses TLS; the hostnossl reject rule ensures it.
    return { current_user => $user, ssl => undef,
      driver => "DBD::Pg $DBD::Pg::VERSION, DBI $DBI::VERSION, libpq " . $c->{pg_lib_version} . ", Perl " . sprintf('%vd', $^V) };
  },
  cert_login => sub {
    my $cc = connect_db(user => $ENV{PGB_CERT_USER}, password => undef, host => 'localhost', hostaddr => '127.0.0.1',
      sslmode => 'verify-full', sslrootcert => $ENV{PGB_CA}, sslcert => $ENV{PGB_CERT}, sslkey => $ENV{PGB_KEY});
    my ($user, $tenant) = $cc->selectrow_array("SELECT current_user, current_setting('app.tenant_id')");
    $cc->disconnect;
    return { current_user => $user, tenant => $tenant };
  },
  simple_query => sub {
    my ($v, $t) = $c->selectrow_array("SELECT 1 + 1, 'hello'");
    return { value => 0 + $v, text => $t, note => 'no placeholders' };
  },
  param_query => sub {
    my ($v, $t) = $c->selectrow_array("SELECT ?::int + 1, ?::text || '-ok'", undef, 41, 'wörld');
    return { value => 0 + $v, text => $t, note => 'placeholders, server-side prepare (pg_server_prepare default)' };
  },
  prepared_repeat => sub {
    my $p = connect_db();
    $p->{pg_server_prepare} = 1;
    my $sth = $p->prepare("SELECT $PREP_MARKER ?::int * 2, current_setting('app.tenant_id'), pg_backend_pid()");
    my ($n, $correct, $prepared, %backends, %names) = (25, 0, 0);
    for my $i (0 .. $n - 1) {
      $p->begin_work;
      $sth->execute($i);
      my ($v, $tenant, $pid) = $sth->fetchrow_array;
      $sth->finish;
      $correct++ if $v == 2 * $i && $tenant eq 'a';
      $backends{$pid} = 1;
      my ($cnt, $nm) = $p->selectrow_array($PREP_CHECK);
      $prepared++ if $cnt > 0;
      $names{$_} = 1 for split /,/, $nm // '';
      $p->commit;
    }
    undef $sth;
    $p->disconnect;
    return { iterations => $n, correct => $correct, backends => scalar(keys %backends), prepared_in => $prepared,
      names => [sort keys %names], note => 'one statement handle, pg_server_prepare=1, one transaction each' };
  },
  prepared_free => sub {
    # DBD::Pg frees a server-side prepared statement when its handle goes: SQL DEALLOCATE <name>.
    my $f = connect_db();
    my $sth = $f->prepare("SELECT $FREE_MARKER ?::int");
    $sth->execute($_), $sth->finish for 1 .. 2;
    my ($free_error, $check_state, $remaining);
    $f->begin_work;
    $sth->execute(3);
    $sth->finish;
    {
      my @warnings;
      local $SIG{__WARN__} = sub { push @warnings, @_ };
      undef $sth;
      $free_error = $f->state . ' ' . $f->errstr if $f->err;
      $free_error //= join ' ', @warnings if @warnings;
    }
    eval { ($remaining) = $f->selectrow_array($FREE_CHECK); 1 } or $check_state = $f->state;
    eval { $f->commit; 1 } or eval { $f->rollback };
    $f->disconnect;
    return { free_error => $free_error, check_sqlstate => $check_state,
      remaining => defined $remaining ? 0 + $remaining : undef, note => 'statement handle destroyed: SQL DEALLOCATE <name>' };
  },
  tx_commit => sub {
    $c->begin_work;
    $c->do("INSERT INTO compat_items (run, k, v) VALUES (?, 1, 'one'), (?, 2, 'two')", undef, $RUN, $RUN);
    $c->commit;
    return { count => count_items() };
  },
  tx_rollback => sub {
    my $before = count_items();
    $c->begin_work;
    $c->do("INSERT INTO compat_items (run, k, v) VALUES (?, 3, 'three')", undef, $RUN);
    my $inside = count_items();
    $c->rollback;
    return { before => $before, inside => $inside, after => count_items() };
  },
  error_recovery => sub {
    my ($first, $in_failed);
    eval { $c->do('SELECT 1/0'); 1 } or $first = $c->state;
    $c->begin_work;
    eval { $c->do('SELECT 1/0'); 1 };
    eval { $c->do('SELECT 1'); 1 } or $in_failed = $c->state;
    $c->rollback;
    my ($after) = $c->selectrow_array('SELECT 1');
    return { sqlstate => $first, in_failed_tx => $in_failed, after => 0 + $after };
  },
  copy_in => sub {
    $c->do('COPY compat_copy (run, n, t) FROM STDIN');
    $c->pg_putcopydata("$RUN\t$_\tt$_\n") for 1 .. 1000;
    $c->pg_putcopyend;
    my ($count, $sum) = $c->selectrow_array('SELECT count(*)::int, sum(n)::int FROM compat_copy WHERE run = ?', undef, $RUN);
    return { count => 0 + $count, sum => 0 + $sum, note => 'pg_putcopydata / pg_putcopyend' };
  },
  copy_out => sub {
    $c->do("COPY (SELECT g, 'x' || g FROM generate_series(1, 1000) g) TO STDOUT");
    my (@lines, $line);
    while ($c->pg_getcopydata($line) >= 0) { chomp(my $l = $line); push @lines, $l }
    return { lines => scalar @lines, first => $lines[0], last => $lines[-1], note => 'pg_getcopydata' };
  },
  large_result => sub {
    my $vals = $c->selectcol_arrayref('SELECT g FROM generate_series(1, 100000) g');
    my $sum = 0;
    $sum += $_ for @$vals;
    return { rows => scalar @$vals, sum => $sum };
  },
  cancel => sub {
    my $start = time;
    $c->do('SELECT pg_sleep(10)', { pg_async => PG_ASYNC });
    sleep 0.5;
    my $at = time;
    $c->pg_cancel;
    my $state = $c->state;
    my $end = time;
    my ($after) = $c->selectrow_array('SELECT 1');
    return { sqlstate => $state, total_ms => int(($end - $start) * 1000), after_cancel_ms => int(($end - $at) * 1000),
      after => 0 + $after, note => 'asynchronous query (pg_async) + pg_cancel' };
  },
  listen_notify => sub {
    my ($l, $n) = (connect_db(), connect_db());
    my $channel = "compat_$RUN";
    $l->do("LISTEN $channel");
    $n->do("NOTIFY $channel, 'hello-$RUN'");
    my $got;
    my $deadline = time + 5;
    my $sel = IO::Select->new;
    open(my $fh, '<&=', $l->{pg_socket}) or die "pg_socket: $!";
    $sel->add($fh);
    while (!($got = $l->pg_notifies) && time < $deadline) { $sel->can_read(0.2) }
    $l->disconnect;
    $n->disconnect;
    return { channel => $got ? $got->[0] : undef, payload => $got ? $got->[2] : undef, note => 'pg_notifies' };
  },
  pinned_rls => sub {
    my ($tenant, $tenants, $rows) = rls_state($c);
    return { tenant => $tenant, tenants => $tenants, rows => $rows };
  },
  tamper_refused => sub {
    my ($state, $message, $param_state);
    eval { $c->do("SET app.tenant_id = 'x'"); 1 } or ($state, $message) = ($c->state, $c->errstr);
    eval { $c->selectrow_array("SELECT set_config('app.tenant_id', ?, false)", undef, 'x'); 1 } or $param_state = $c->state;
    my ($tenant, $tenants, $rows) = rls_state($c);
    return { sqlstate => $state, message => $message, sqlstate_param => $param_state, tenant_after => $tenant,
      tenants_after => $tenants, rows_after => $rows };
  },
);

while (my ($id, $fn) = splice @steps, 0, 2) {
  my $started = time;
  my $observed = eval { $fn->() };
  my $ms = int((time - $started) * 1000);
  if ($observed) {
    print $JSON->encode({ step => $id, status => 'ok', observed => $observed, ms => $ms }), "\n";
  } else {
    my $err = $@ || 'unknown error';
    my $state = $c ? $c->state : $DBI::state;
    print $JSON->encode({ step => $id, status => 'error', ms => $ms,
      error => { sqlstate => ($state || undef), message => "$err", type => 'DBI' } }), "\n";
  }
}
$c->disconnect if $c;
