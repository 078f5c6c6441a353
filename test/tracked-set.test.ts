// Which statements set a startup parameter plainly enough to be remembered with the client's
// settings (session/tracked-set.ts) instead of making it sticky in transaction mode.

import t from 'tap';
import { trackedSet } from '../src/session/tracked-set.js';

t.test('tracked: SET, SET TIME ZONE and set_config(…, false) of a startup parameter, with a constant', async (t) => {
  const cases: [string, { name: string; value: string } | null][] = [
    ["SET application_name = 'app'", { name: 'application_name', value: 'app' }],
    ['set SESSION DateStyle TO ISO', { name: 'DateStyle', value: 'iso' }],
    ["SET extra_float_digits = 3;", { name: 'extra_float_digits', value: '3' }],
    ["SET application_name = 'it''s'", { name: 'application_name', value: "it's" }],
    ["SET TIME ZONE 'Asia/Tokyo'", { name: 'TimeZone', value: 'Asia/Tokyo' }],
    ['set session time zone UTC;', { name: 'TimeZone', value: 'utc' }],
    ['SET application_name = MyApp', { name: 'application_name', value: 'myapp' }],
    ['SET extra_float_digits = -1', { name: 'extra_float_digits', value: '-1' }],
    ["SET application_name = 'DEFAULT'", { name: 'application_name', value: 'DEFAULT' }],
    ['SET TIME ZONE -5', { name: 'TimeZone', value: '-5' }],
    ["SELECT set_config('TimeZone', 'UTC', false)", { name: 'TimeZone', value: 'UTC' }],
    ["select pg_catalog.set_config('application_name','x''y',FALSE);", { name: 'application_name', value: "x'y" }],
    // Not tracked (the policy judges them: most are sticky).
    ['SET TIME ZONE LOCAL', null],
    ['SET TIME ZONE DEFAULT', null],
    ['SET TimeZone = default', null],
    ['SET client_encoding TO DEFAULT', null],
    ["SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE", null],
    ["SET LOCAL application_name = 'x'", null],
    ["SET app.tenant_id = 'b'", null],
    ["SET work_mem = '64MB'", null],
    ['SET search_path TO public, "$user"', null],
    ["SELECT set_config('TimeZone', 'UTC', true)", null],
    ["SELECT set_config('app.tenant_id', 'b', false)", null],
    ["SELECT set_config('TimeZone', $1, false)", null],
    ["SELECT set_config('TimeZone', 'UTC', false), pg_sleep(1)", null],
    ["SELECT set_config('TimeZone', 'UTC', false); SELECT 1", null],
    ["SET application_name = 'x'; SET TIME ZONE 'UTC'", null],
    ["SET application_name = 'x\\'", null],
    ["SELECT set_config('application_name', 'x\\', false)", null],
  ];
  for (const [sql, want] of cases) t.same(trackedSet(sql), want, sql);
});
