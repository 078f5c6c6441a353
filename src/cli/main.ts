#!/usr/bin/env node
// The `pgbastion` command: dispatches to start, check, scram-secret and the other
// sub-commands of SPEC §1. Exit codes: 0 ok, 1 invalid input/config, 2 runtime failure.

import { runCerts } from './certs.js';
import { runCheck } from './check.js';
import { runHba } from './hba.js';
import { runScramSecret } from './scram-secret.js';
import { runStart } from './start.js';

const USAGE = `usage: pgbastion <command> [options]

commands:
  start [-c FILE]                      run the proxy (FILE: $PGBASTION_CONFIG or config/pgbastion.yaml)
  check [-c FILE]                      validate a config file
  scram-secret [--iterations N]        read a password on stdin, print a SCRAM-SHA-256 secret
  certs init --dir DIR [--host NAME]   create a local CA and a server certificate
  certs client --dir DIR --cn NAME     issue a client certificate from DIR's CA
  hba explain -c FILE --user U --database D --address A [--ssl] [--cert-cn CN]
                                       show which rule decides a connection

Run "pgbastion <command> --help" for a command's options.`;

const out = (s: string): void => void process.stdout.write(s + '\n');
const err = (s: string): void => void process.stderr.write(s + '\n');

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  switch (command) {
    case 'start':
      return runStart(args, out, err);
    case 'check':
      return runCheck(args, out, err);
    case 'scram-secret':
      return runScramSecret(args, process.stdin, out, err);
    case 'certs':
      return runCerts(args, out, err);
    case 'hba':
      return runHba(args, out, err);
    case undefined:
    case '--help':
    case '-h':
    case 'help':
      out(USAGE);
      return command === undefined ? 1 : 0;
    default:
      err(`pgbastion: unknown command "${command}"\n\n${USAGE}`);
      return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    // `start` keeps running; it sets its own exit code on shutdown.
    if (code >= 0) process.exitCode = code;
  },
  (e: unknown) => {
    err(`pgbastion: ${e instanceof Error ? e.message : String(e)}`);
    process.exitCode = 2;
  },
);
