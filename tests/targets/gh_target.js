// goldenhour dump target (Node.js), adapted from ../shared/runtime-targets/gh_target.js.
// A retained heap of --heap-mb MiB, a worker thread named gh-worker that appends
// process.hrtime (CLOCK_MONOTONIC ns) to --ticker FILE about every millisecond (a heartbeat
// that keeps beating while the main thread is busy; with --main-ticker the main thread's event
// loop ticks instead, to measure how long it is blocked), and with --spin a main thread that
// spins in spinForever() after READY (a stuck event loop; its JS stack is then known).
'use strict';
const fs = require('fs');
const { Worker, isMainThread, workerData } = require('worker_threads');

function arg(name, dflt) { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; }

if (!isMainThread) {
  const crunch = () => { let s = 0; for (let i = 0; i < 20000; i++) s += i * i; return s; };
  const fd = workerData.ticker ? fs.openSync(workerData.ticker, 'a') : null;
  setInterval(function heartbeat() { crunch(); if (fd !== null) fs.writeSync(fd, process.hrtime.bigint().toString() + '\n'); }, 1);
} else {
  const heapMb = Number(arg('--heap-mb', 8));
  const retained = [];
  let seed = 42; const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) >> 16;
  const text = Buffer.from(Array.from({ length: 1 << 16 }, () => String.fromCharCode(32 + (rnd() & 63))).join(''), 'latin1');
  for (let i = 0; i < heapMb * 1024; i++) {
    const off = (i * 997) % (text.length - 900);
    retained.push({ id: i, name: 'gh-item-' + i, pad: text.toString('latin1', off, off + 900) });
  }
  globalThis.ghRetained = retained;
  const mainTicker = process.argv.includes('--main-ticker');
  const w = new Worker(__filename, { name: 'gh-worker', workerData: { ticker: mainTicker ? null : arg('--ticker') } });
  if (mainTicker) {
    const fd = fs.openSync(arg('--ticker'), 'a');
    setInterval(function tick() { fs.writeSync(fd, process.hrtime.bigint().toString() + '\n'); }, 1);
  }
  function spinForever() { let x = 0; for (;;) { x = (x + 1) % 1e9; } }
  w.once('online', () => {
    console.log('READY ' + process.pid);
    if (process.argv.includes('--spin')) spinForever();   // stdout to a pipe is synchronous: READY is out
  });
}
