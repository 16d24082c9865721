// The files view's rule for snapshots that come late (static/views/files.js),
// without a browser: `node --test`.  Run by tests/js/test_reducer.py.

import assert from "node:assert/strict";
import { test } from "node:test";

import { isStale } from "../../static/views/files.js";

const file = (status, bytes, extra = {}) => ({ id: "ab", peer: 1, direction: "in", size: 100, status, bytes, ...extra });

test("the answer to Accept, served before the file completed, does not undo the complete event", () => {
  // The websocket told "accepted" then "complete"; the POST's answer comes last.
  assert.equal(isStale(file("complete", 100), file("accepted", 0)), true);
  assert.equal(isStale(file("failed", 0), file("accepted", 0)), true);
  assert.equal(isStale(file("cancelled", 0), file("offered", 0)), true);
});

test("the answer to an upload does not undo the accept that came first", () => {
  const out = { direction: "out" };
  assert.equal(isStale(file("accepted", 0, out), file("offered", 0, out)), true);
  assert.equal(isStale(file("complete", 100, out), file("offered", 0, out)), true);
});

test("every step forward, and a file not seen yet, is shown", () => {
  assert.equal(isStale(undefined, file("offered", 0)), false);
  assert.equal(isStale(file("offered", 0), file("accepted", 0)), false);
  assert.equal(isStale(file("accepted", 0), file("accepted", 60)), false);
  assert.equal(isStale(file("accepted", 60), file("complete", 100)), false);
  assert.equal(isStale(file("offered", 0), file("cancelled", 0)), false);
  assert.equal(isStale(file("accepted", 10), file("failed", 10)), false);
});
