// A Go service leaking goroutines (a report test target): every request publishes an event on an
// unbuffered channel whose only consumer has died, so each request's goroutine parks in "chan send"
// at (*Broker).Publish forever. -n such goroutines are started; the API listens on one loopback
// port (its own mux, no pprof) and, with -pprof, net/http/pprof on another. Prints
// "READY <pid> <api port> <pprof port or 0>" once every goroutine is parked.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"runtime"
	"sync"
	"time"
)

type Broker struct{ events chan string }

// Publish hands an event to the consumer; nobody receives any more.
func (b *Broker) Publish(ev string) { b.events <- ev }

func handleOrder(b *Broker, id int, started *sync.WaitGroup) {
	started.Done()
	b.Publish(fmt.Sprintf("order-created %d", id))
}

func listen() net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	return ln
}

func main() {
	n := flag.Int("n", 4000, "requests whose goroutine leaks")
	pprof := flag.Bool("pprof", false, "serve net/http/pprof on a second port")
	flag.Parse()
	b := &Broker{events: make(chan string)}
	var started sync.WaitGroup
	started.Add(*n)
	for i := 0; i < *n; i++ {
		go handleOrder(b, i, &started)
	}
	started.Wait()
	time.Sleep(50 * time.Millisecond)
	// a GC stamps every waiting goroutine's wait-since time, which Delve prints after the wait reason
	// ("chan send 5162130085836"): the report must still see one wait
	runtime.GC()
	runtime.GC()
	api := http.NewServeMux()
	api.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	apiLn := listen()
	go http.Serve(apiLn, api)
	pport := 0
	if *pprof {
		pln := listen()
		pport = pln.Addr().(*net.TCPAddr).Port
		go http.Serve(pln, nil)
	}
	time.Sleep(100 * time.Millisecond) // the last goroutines reach the channel send
	fmt.Printf("READY %d %d %d\n", os.Getpid(), apiLn.Addr().(*net.TCPAddr).Port, pport)
	select {}
}
