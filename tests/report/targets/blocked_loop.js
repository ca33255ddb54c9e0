// A Node.js service whose event loop is blocked by a synchronous, CPU-bound request handler (a report
// test target). GET /report runs buildReport(), which loops for BLOCK_S seconds (default 120) without
// yielding: the process keeps its port open, answers nothing and shows 100 % CPU on its main thread.
// Prints "READY <pid> <port>" once listening; the test then sends GET /report and captures.
'use strict';
const http = require('http');

const BLOCK_S = Number(process.env.BLOCK_S || 120);

function scoreOrder(i) {
  let h = i;
  for (let k = 0; k < 50; k++) h = (h * 31 + k) % 1000003;
  return h;
}

function buildReport(deadline) {
  let total = 0;
  for (let i = 0; Date.now() < deadline; i++) total += scoreOrder(i);   // never yields to the event loop
  return total;
}

const server = http.createServer((req, res) => {
  if (req.url === '/report') {
    const total = buildReport(Date.now() + BLOCK_S * 1000);
    res.end(`report ${total}\n`);
    return;
  }
  res.end('ok\n');
});

server.listen(0, '127.0.0.1', () => {
  console.log(`READY ${process.pid} ${server.address().port}`);
});
