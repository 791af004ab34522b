// Drives the unmodified zulip-js client for tests/test_real_clients.py.
//
// Reads one JSON command per line on stdin and writes one JSON line per answer or
// event on stdout, so the Python test decides what happens and when:
//   {"id": 1, "op": "call", "method": "messages.send", "params": {...}}
//       -> {"id": 1, "result": <what zulip-js resolved to>} or {"id": 1, "error": "..."}
//   {"id": 2, "op": "listen"}
//       -> {"id": 2, "result": "listening"}, then {"event": <event>} for every event that
//          zulip-js's callOnEachEvent(callback) hands to the callback, with its defaults
//          (event_types null).
// The connection comes from ZULIP_SITE, ZULIP_EMAIL and ZULIP_API_KEY. zulip-js reports
// its own trouble with console.log ("zulip-js: Error while communicating with server");
// those lines go to stderr, where the test looks for them.

'use strict';

const readline = require('readline');
const util = require('util');
const zulipInit = require('zulip-js');

console.log = (...args) => process.stderr.write(`${util.format(...args)}\n`);

function emit(value) {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

// "messages.send" -> client.messages.send; "reactions.add" -> client.reactions.add.
function resolveMethod(client, dotted) {
  const parts = dotted.split('.');
  const name = parts.pop();
  let owner = client;
  for (const part of parts) {
    owner = owner[part];
    if (owner === undefined) {
      throw new Error(`zulip-js has no ${dotted}`);
    }
  }
  if (typeof owner[name] !== 'function') {
    throw new Error(`zulip-js has no ${dotted}`);
  }
  return owner[name].bind(owner);
}

async function main() {
  const client = await zulipInit({
    username: process.env.ZULIP_EMAIL,
    apiKey: process.env.ZULIP_API_KEY,
    realm: process.env.ZULIP_SITE,
  });

  const lines = readline.createInterface({ input: process.stdin });
  lines.on('line', async (line) => {
    if (!line.trim()) {
      return;
    }
    const command = JSON.parse(line);
    try {
      if (command.op === 'listen') {
        // Never resolves: it loops for the life of the process, as a real program's does.
        client.callOnEachEvent((event) => emit({ event }));
        emit({ id: command.id, result: 'listening' });
      } else if (command.op === 'call') {
        const method = resolveMethod(client, command.method);
        const result = await method(command.params || {});
        emit({ id: command.id, result });
      } else {
        emit({ id: command.id, error: `unknown op ${command.op}` });
      }
    } catch (error) {
      emit({ id: command.id, error: String(error && error.stack ? error.stack : error) });
    }
  });
  lines.on('close', () => process.exit(0));
  emit({ ready: true });
}

main().catch((error) => {
  process.stderr.write(`drive.js: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
