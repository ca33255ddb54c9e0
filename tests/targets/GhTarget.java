// goldenhour dump target (JVM). Named threads in known states, a retained heap of
// --heap-mb MiB, and a ticker thread that appends System.nanoTime() (CLOCK_MONOTONIC)
// to --ticker FILE about every millisecond, so the longest gap = the longest pause.
// Usage: java GhTarget.java [--ticker FILE] [--heap-mb N] [--churn-mb N]   (or javac + java GhTarget)
// --churn-mb N: a thread "gh-churn" keeps a rolling window of N MiB of 1 KiB arrays, replacing
// the oldest without pause: objects live long enough to be promoted, then die in the old
// generation; with --heap-mb near the old generation's size, the JVM runs back-to-back full GCs.
// (Adapted from ../shared/runtime-targets/GhTarget.java: READY once the deadlock has formed.)
import java.io.FileOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.locks.ReentrantLock;
import java.util.concurrent.locks.LockSupport;

public class GhTarget {
    static final Object LOCK_A = new Object(), LOCK_B = new Object();
    static final ReentrantLock HELD = new ReentrantLock();
    static final List<Object> RETAINED = new ArrayList<>();
    static volatile long sink;

    static final java.util.SplittableRandom RND = new java.util.SplittableRandom(42);
    static final class Node { final String name; final byte[] payload; Node next; // ~1 KiB each
        Node(int i, Node next) { this.name = "node-" + i; this.payload = new byte[1000]; this.next = next;
            for (int j = 0; j < payload.length; j++) payload[j] = (byte) (32 + RND.nextInt(64)); } } // text-like, ~6 bits/byte

    public static void main(String[] args) throws Exception {
        String ticker = null; int heapMb = 64; int churnMb = 0;
        for (int i = 0; i < args.length; i++) {
            if (args[i].equals("--ticker")) ticker = args[++i];
            else if (args[i].equals("--heap-mb")) heapMb = Integer.parseInt(args[++i]);
            else if (args[i].equals("--churn-mb")) churnMb = Integer.parseInt(args[++i]);
        }
        // retained heap: chains of small objects (many objects, like a real heap)
        int per = 1024; Node head = null;
        for (int i = 0; i < heapMb * 1024; i++) { head = new Node(i, head); if (i % per == per - 1) { RETAINED.add(head); head = null; } }

        java.util.concurrent.CyclicBarrier bothHoldOne = new java.util.concurrent.CyclicBarrier(2);
        Thread a = start("gh-deadlock-a", () -> { synchronized (LOCK_A) { await(bothHoldOne); synchronized (LOCK_B) { sink++; } } });
        Thread b = start("gh-deadlock-b", () -> { synchronized (LOCK_B) { await(bothHoldOne); synchronized (LOCK_A) { sink++; } } });
        while (a.getState() != Thread.State.BLOCKED || b.getState() != Thread.State.BLOCKED) Thread.onSpinWait();
        start("gh-lock-holder", () -> { HELD.lock(); try { while (true) nap(1000); } finally { HELD.unlock(); } });
        start("gh-worker", GhTarget::crunchForever);
        if (ticker != null) { final String path = ticker; start("gh-ticker", () -> tick(path)); }
        if (churnMb > 0) { final int n = churnMb * 1024; start("gh-churn", () -> churn(n)); }
        System.out.println("READY " + ProcessHandle.current().pid());
        System.out.flush();
        while (true) nap(60_000);
    }

    static void crunchForever() {           // light CPU + garbage, then rest
        while (true) { long s = 0; for (int i = 0; i < 20_000; i++) { s += new int[4].length * i; } sink += s; nap(2); }
    }

    static void churn(int n) {              // a rolling window of n live 1 KiB arrays
        java.util.ArrayDeque<byte[]> window = new java.util.ArrayDeque<>(n);
        while (true) { window.addLast(new byte[1024]); if (window.size() > n) window.removeFirst(); }
    }

    static void tick(String path) {
        try (FileOutputStream out = new FileOutputStream(path, true)) {
            while (true) {
                LockSupport.parkNanos(1_000_000L);
                out.write((System.nanoTime() + "\n").getBytes(StandardCharsets.US_ASCII));
            }
        } catch (Exception e) { e.printStackTrace(); }
    }

    static Thread start(String name, Runnable r) { Thread t = new Thread(r, name); t.setDaemon(true); t.start(); return t; }
    static void await(java.util.concurrent.CyclicBarrier b) { try { b.await(); } catch (Exception e) { throw new RuntimeException(e); } }
    static void nap(long ms) { try { Thread.sleep(ms); } catch (InterruptedException e) { Thread.currentThread().interrupt(); } }
}
