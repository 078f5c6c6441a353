#!/usr/bin/env bash
# `npm run demo`: from a fresh Debian/Ubuntu machine to a working pgbastion in one command.
#
#   1. installs PostgreSQL from the distribution if its binaries are missing;
#   2. installs npm dependencies (if needed) and builds pgbastion;
#   3. starts a throw-away PostgreSQL in .demo/ (scram-sha-256, its own port) with a server
#      role and a small row-level-security table keyed on app.tenant_id;
#   4. creates the proxy user "demo" with a random password, starts pgbastion with
#      config/pgbastion.yaml and prints the psql connection string.
#
# Options: --detach  leave both running in the background (stop with --stop)
#          --stop    stop a detached demo
# Environment: DEMO_PORT (pgbastion, default 6432), DEMO_PG_PORT (PostgreSQL, default 54329),
# DEMO_METRICS_PORT (pgbastion's /metrics, default 9930), DEMO_DIR (default .demo). With other values the demo runs a copy of the sample config
# written into DEMO_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO=${DEMO_DIR:-$ROOT/.demo}
PORT=${DEMO_PORT:-6432}
PG_PORT=${DEMO_PG_PORT:-54329}
METRICS_PORT=${DEMO_METRICS_PORT:-9930}
MODE=foreground
case "${1:-}" in
  --detach) MODE=detach ;;
  --stop) MODE=stop ;;
  "") ;;
  *) echo "usage: npm run demo [-- --detach | -- --stop]" >&2; exit 1 ;;
esac

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_postgres() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_demo() {
  if [[ -f $DEMO/pgbastion.pid ]]; then
    kill "$(cat "$DEMO/pgbastion.pid")" 2>/dev/null || true
    rm -f "$DEMO/pgbastion.pid"
  fi
  if [[ -f $DEMO/data/postmaster.pid ]]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$DEMO/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

find_pg_bin() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x $d/initdb ]] && { echo "$d"; return; }
  done
  command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)"
}

PG_BIN=$(find_pg_bin || true)
if [[ $MODE == stop ]]; then
  [[ -n $PG_BIN ]] && stop_demo
  say "demo stopped"
  exit 0
fi

# ---- 1. system packages ----------------------------------------------------------------
if [[ -z $PG_BIN ]] || ! command -v psql >/dev/null 2>&1; then
  say "installing PostgreSQL (apt)"
  SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-client >/dev/null
  PG_BIN=$(find_pg_bin)
fi
command -v node >/dev/null 2>&1 || { echo "Node.js >= 20 is required (https://nodejs.org)" >&2; exit 1; }

# ---- 2. pgbastion ------------------------------------------------------------------------
if [[ ! -d node_modules ]]; then
  say "installing npm dependencies"
  npm ci --no-audit --no-fund --loglevel=error
fi
# Build only when needed: a rebuild rewrites dist/ under anything already running from it.
if [[ ! -f dist/cli/main.js ]] || [[ -n $(find src package.json tsconfig.json -newer dist/cli/main.js -print -quit) ]]; then
  say "building pgbastion"
  npm run --silent build
fi

# ---- 3. throw-away PostgreSQL -----------------------------------------------------------
stop_demo
rm -rf "$DEMO"
mkdir -p "$DEMO/run"
chmod 755 "$DEMO"
SERVER_PW=$(node -e "process.stdout.write(require('crypto').randomBytes(18).toString('base64url'))")
DEMO_PW=$(node -e "process.stdout.write(require('crypto').randomBytes(12).toString('base64url'))")
SUPER_PW=$(node -e "process.stdout.write(require('crypto').randomBytes(18).toString('base64url'))")
printf '%s\n' "$SUPER_PW" > "$DEMO/superuser.pw"
chmod 600 "$DEMO/superuser.pw"
if [[ $(id -u) -eq 0 ]]; then chown -R postgres "$DEMO/run" "$DEMO/superuser.pw"; chown postgres "$DEMO"; fi

say "starting a throw-away PostgreSQL on 127.0.0.1:$PG_PORT"
as_postgres "$PG_BIN/initdb" -D "$DEMO/data" -U postgres --auth=scram-sha-256 \
  --pwfile="$DEMO/superuser.pw" -E UTF8 --locale=C --no-sync >"$DEMO/initdb.log" 2>&1
as_postgres "$PG_BIN/pg_ctl" -D "$DEMO/data" -l "$DEMO/postgres.log" -w -o \
  "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$DEMO/run -c fsync=off" start >/dev/null

export PGPASSWORD=$SUPER_PW
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 <<SQL
CREATE ROLE app_rw LOGIN PASSWORD '$SERVER_PW';
CREATE TABLE notes (tenant_id text NOT NULL, body text NOT NULL);
INSERT INTO notes VALUES ('demo', 'visible to tenant demo'), ('other', 'only tenant other sees this');
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON notes USING (tenant_id = current_setting('app.tenant_id', true));
GRANT SELECT, INSERT ON notes TO app_rw;
GRANT CREATE ON SCHEMA public TO app_rw;
SQL
unset PGPASSWORD

# ---- 4. pgbastion in front of it --------------------------------------------------------
node dist/cli/main.js scram-secret <<<"$DEMO_PW" >"$DEMO/demo.scram"
chmod 600 "$DEMO/demo.scram"
CONFIG=$ROOT/config/pgbastion.yaml
if [[ $PORT != 6432 || $PG_PORT != 54329 || $METRICS_PORT != 9930 || $DEMO != "$ROOT/.demo" ]]; then
  CONFIG=$DEMO/pgbastion.yaml
  sed -e "s/port: 6432/port: $PORT/" -e "s/port: 54329/port: $PG_PORT/" -e "s/port: 9930/port: $METRICS_PORT/" \
      -e 's#\.\./\.demo/demo\.scram#demo.scram#' "$ROOT/config/pgbastion.yaml" >"$CONFIG"
fi
export PGBASTION_APP_RW_PASSWORD=$SERVER_PW
node dist/cli/main.js check -c "$CONFIG" >&2

say "starting pgbastion on 127.0.0.1:$PORT (log: $DEMO/pgbastion.log)"
node dist/cli/main.js start -c "$CONFIG" >>"$DEMO/pgbastion.log" 2>&1 &
echo $! >"$DEMO/pgbastion.pid"
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$(cat "$DEMO/pgbastion.pid")" 2>/dev/null || { cat "$DEMO/pgbastion.log" >&2; stop_demo; exit 2; }
  sleep 0.1
done

URL="postgresql://demo:$DEMO_PW@127.0.0.1:$PORT/postgres?sslmode=disable"
(umask 077; printf '%s\n' "$URL" >"$DEMO/psql-url")
cat <<EOF

pgbastion is running. Connect with:

  psql "$URL"

Try:  SELECT * FROM notes;                      -- row-level security: only tenant "demo"
      SHOW app.tenant_id;                       -- set by pgbastion from the user's pins

EOF

if [[ $MODE == detach ]]; then
  echo "Stop it with: npm run demo -- --stop"
  exit 0
fi
echo "Press Ctrl-C to stop pgbastion and the demo PostgreSQL."
trap 'stop_demo; echo; say "demo stopped"; exit 0' INT TERM
wait "$(cat "$DEMO/pgbastion.pid")" || true
stop_demo
