// goldenhour dump target (Go). Goroutines in known states (a mutex deadlock, a
// channel wait, a CPU worker), a retained heap of -heap-mb MiB, an optional pprof
// endpoint (-pprof 127.0.0.1:6060), -park N goroutines leaked in a channel send, and a ticker goroutine that appends
// CLOCK_MONOTONIC ns to -ticker FILE about every millisecond.
// (Adapted from ../shared/runtime-targets/gh_target.go: READY once the deadlock has formed.)
package main

import (
	"flag"
	"fmt"
	"math/rand"
	"net/http"
	_ "net/http/pprof"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

type node struct {
	name    string
	payload []byte
	next    *node
}

var (
	retained []*node
	muA, muB sync.Mutex
	sink     int
	forever  = make(chan struct{})
)

func monoNs() int64 { // CLOCK_MONOTONIC, comparable with other processes
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}

var bothHoldOne sync.WaitGroup

func deadlockA() { muA.Lock(); bothHoldOne.Done(); bothHoldOne.Wait(); muB.Lock() }
func deadlockB() { muB.Lock(); bothHoldOne.Done(); bothHoldOne.Wait(); muA.Lock() }

// deadlocked: both deadlock goroutines wait in a mutex acquisition (seen in our own stack dump).
func deadlocked() bool {
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "[semacquire") >= 2
}
func waitForever() { <-forever }
func crunchForever() {
	for {
		s := 0
		for i := 0; i < 20000; i++ {
			s += len(make([]int, 4)) * i
		}
		sink += s
		time.Sleep(2 * time.Millisecond)
	}
}

func tick(path string) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		panic(err)
	}
	for {
		time.Sleep(time.Millisecond)
		fmt.Fprintf(f, "%d\n", monoNs())
	}
}

func main() {
	ticker := flag.String("ticker", "", "append CLOCK_MONOTONIC ns here every ms")
	heapMb := flag.Int("heap-mb", 64, "retained heap in MiB")
	pprof := flag.String("pprof", "", "serve net/http/pprof on this address")
	park := flag.Int("park", 0, "goroutines parked in a channel send nobody receives (a leak)")
	flag.Parse()
	leak := make(chan int)
	for i := 0; i < *park; i++ {
		go func(n int) { leak <- n }(i)
	}
	var head *node
	for i := 0; i < *heapMb*1024; i++ {
		p := make([]byte, 1000)
		for j := range p {
			p[j] = byte(32 + rand.Intn(64)) // text-like, ~6 bits/byte
		}
		head = &node{name: fmt.Sprintf("node-%d", i), payload: p, next: head}
		if i%1024 == 1023 {
			retained = append(retained, head)
			head = nil
		}
	}
	bothHoldOne.Add(2)
	go deadlockA()
	go deadlockB()
	go waitForever()
	go crunchForever()
	if *ticker != "" {
		go tick(*ticker)
	}
	if *pprof != "" {
		go http.ListenAndServe(*pprof, nil)
	}
	for !deadlocked() {
		time.Sleep(time.Millisecond)
	}
	fmt.Printf("READY %d\n", os.Getpid())
	select {}
}
