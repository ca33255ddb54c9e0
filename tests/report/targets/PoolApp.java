// A JVM service whose connection pool is exhausted (a report test target): a pool of two connections,
// one leaked and one held by a call the backend never answers; twelve request threads then wait in
// Pool.getConnection -> ArrayBlockingQueue.take forever. Prints "READY <pid>" once they all wait.
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.CountDownLatch;

public class PoolApp {
    static class Pool {
        private final ArrayBlockingQueue<String> idle = new ArrayBlockingQueue<>(2);

        Pool() { idle.add("conn-0"); idle.add("conn-1"); }

        String getConnection() throws InterruptedException { return idle.take(); }

        void release(String c) { idle.add(c); }
    }

    static final Pool pool = new Pool();

    static String handle(int request, CountDownLatch started) throws InterruptedException {
        started.countDown();
        String c = pool.getConnection();          // waits for a connection nobody returns
        try { return request + " via " + c; } finally { pool.release(c); }
    }

    public static void main(String[] args) throws Exception {
        String leaked = pool.getConnection();
        Thread backend = new Thread(() -> {
            try { pool.getConnection(); Thread.sleep(Long.MAX_VALUE); } catch (InterruptedException e) { }
        }, "backend-call");
        backend.setDaemon(true);
        backend.start();
        Thread.sleep(50);
        CountDownLatch started = new CountDownLatch(12);
        for (int i = 0; i < 12; i++) {
            final int n = i;
            Thread t = new Thread(() -> {
                for (int r = 0; ; r++) {
                    try { handle(n * 1000 + r, started); } catch (InterruptedException e) { return; }
                }
            }, "request-worker-" + i);
            t.setDaemon(true);
            t.start();
        }
        started.await();
        Thread.sleep(300);
        System.out.println("READY " + ProcessHandle.current().pid() + " " + leaked);
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }
}
