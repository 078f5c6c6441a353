// A node-postgres client's connection read raw, after its login: every reply in order, as
// short words, for tests that write protocol messages themselves (node-postgres cannot run
// queries on the connection afterwards).

import type pg from 'pg';

type RawConnection = { stream: { write(x: Buffer): void }; on(e: string, f: (m: never) => void): void };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * `seen` lists the replies: parsed, bound, closed, nodata, params, columns:<names>, data rows
 * as their values joined by |, done:<tag>, copyin for a CopyInResponse, errors as E<SQLSTATE>,
 * fn for a FunctionCallResponse, Z for ReadyForQuery.
 */
export function rawOf(c: pg.Client) {
  const raw = (c as unknown as { connection: RawConnection }).connection;
  const seen: string[] = [];
  const st = { ready: 0 };
  const note = (name: string, f: (m: never) => string) => raw.on(name, ((m: never) => seen.push(f(m))) as (m: never) => void);
  note('parseComplete', () => 'parsed');
  note('bindComplete', () => 'bound');
  note('closeComplete', () => 'closed');
  note('noData', () => 'nodata');
  note('parameterDescription', () => 'params');
  note('rowDescription', (m: { fields: { name: string }[] }) => `columns:${m.fields.map((f) => f.name).join(',')}`);
  note('dataRow', (m: { fields: (string | null)[] }) => m.fields.join('|'));
  note('commandComplete', (m: { text: string }) => `done:${m.text}`);
  note('copyInResponse', () => 'copyin');
  // (pg-protocol has no FunctionCallResponse: it reports the message as an invalid one.)
  note('errorMessage', (m: { code: string; message: string }) => (m.message === 'received invalid response: 56' ? 'fn' : `E${m.code}`));
  raw.on('readyForQuery', (() => {
    st.ready++;
    seen.push('Z');
  }) as (m: never) => void);
  const until = async (n: number, ms = 4000) => {
    const end = Date.now() + ms;
    while (st.ready < n && Date.now() < end) await sleep(3);
  };
  /** Writes one batch of messages in one write; resolves once `replies` more ReadyForQuery arrived. */
  const send = async (replies: number, ...messages: Buffer[]) => {
    const want = st.ready + replies;
    seen.length = 0;
    raw.stream.write(Buffer.concat(messages));
    await until(want);
    return [...seen];
  };
  /**
   * Like send, but waits for `replies` ReadyForQuery or, given `reply`, for that reply; then
   * 300 ms more, so that anything the server should not have sent shows too.
   */
  const sendAndSettle = async (replies: number, messages: Buffer[], reply?: string) => {
    const want = st.ready + replies;
    seen.length = 0;
    raw.stream.write(Buffer.concat(messages));
    const end = Date.now() + 5000;
    while ((reply === undefined ? st.ready < want : !seen.includes(reply)) && Date.now() < end) await sleep(3);
    await sleep(300);
    return [...seen];
  };
  return { raw, seen, st, until, send, sendAndSettle };
}
