// loadpump: the router-overhead benchmark's load generator and STAND-IN backend, compiled, so
// that at thousands of requests a second on this 2-core machine the harness leaves the router
// under test a core of its own (the Python ones, at 400 req/s, took as much CPU as the router).
//
//	loadpump backend -port 18900 [-first-delay 2ms] [-gap 1ms] [-stream-interval 1]
//	loadpump client -url http://127.0.0.1:18910/v1/completions -plan plan.jsonl > outcomes.json
//	loadpump relay -port 18920 -upstream http://127.0.0.1:18900
//
// The backend answers POST /v1/completions as bench/standin_backend.py does (an OpenAI/vLLM SSE
// stream of max_tokens token ids, the first after -first-delay, the rest -gap apart, in events of
// -stream-interval tokens as vLLM's --stream-interval sends them) and serves the vLLM gauges a
// router reads. It runs no model and must never judge scheduling.
//
// The client sends each line of the plan ({"at": s, "body": {...}, "headers": {...}}) at its
// time after the start, open-loop, streaming, and writes one outcome per line in plan order:
// TTFT (send to the first event carrying a token), tokens, finish and error.
//
// The relay is the floor under any router on this machine: it forwards each request to the
// upstream and copies the answer back a network read at a time, flushing each, and decides,
// parses and checks nothing. What it costs a request is what the two HTTP hops and the per-event
// reads and writes cost, in compiled code.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadpump backend|client [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "backend":
		backend(os.Args[2:])
	case "client":
		client(os.Args[2:])
	case "relay":
		relay(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "loadpump: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func backend(args []string) {
	fs := flag.NewFlagSet("backend", flag.ExitOnError)
	port := fs.Int("port", 18900, "port on 127.0.0.1")
	firstDelay := fs.Duration("first-delay", 2*time.Millisecond, "before the first token")
	gap := fs.Duration("gap", time.Millisecond, "between tokens")
	interval := fs.Int("stream-interval", 1, "tokens an event carries (the last may carry fewer)")
	_ = fs.Parse(args)
	if *interval < 1 {
		fmt.Fprintln(os.Stderr, "loadpump backend: -stream-interval must be at least 1")
		os.Exit(2)
	}
	var running, generated atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/completions", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Model     string `json:"model"`
			MaxTokens int    `json:"max_tokens"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, `{"error":{"message":"bad body","code":400}}`, 400)
			return
		}
		n := body.MaxTokens
		if n <= 0 {
			n = 16
		}
		model, _ := json.Marshal(body.Model)
		w.Header().Set("Content-Type", "text/event-stream")
		flusher := w.(http.Flusher)
		w.WriteHeader(200)
		flusher.Flush()
		running.Add(1)
		defer running.Add(-1)
		time.Sleep(*firstDelay)
		var buf, ids bytes.Buffer
		for i := 0; i < n; i++ {
			if ids.Len() > 0 {
				ids.WriteString(", ")
			}
			fmt.Fprintf(&ids, "%d", 100+i%500)
			last := i == n-1
			if last || (i+1)%*interval == 0 {
				finish := "null"
				if last {
					finish = `"length"`
				}
				buf.Reset()
				fmt.Fprintf(&buf, `data: {"id": "cmpl-standin", "object": "text_completion", `+
					`"created": 0, "model": %s, "choices": [{"index": 0, "text": " tok", `+
					`"token_ids": [%s], "finish_reason": %s}]}`+"\n\n", model, ids.Bytes(), finish)
				ids.Reset()
				if _, err := w.Write(buf.Bytes()); err != nil {
					return // the client left: vLLM aborts such a request
				}
				flusher.Flush()
			}
			generated.Add(1)
			if !last {
				time.Sleep(*gap)
			}
		}
		_, _ = w.Write([]byte("data: [DONE]\n\n"))
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		const labels = `{engine="0",model_name="standin"}`
		fmt.Fprintf(w, "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running%s %d\n"+
			"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting%s 0\n"+
			"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc%s 0.0\n"+
			"# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total%s %d\n",
			labels, running.Load(), labels, labels, labels, generated.Load())
	})
	mux.HandleFunc("/health", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})
	addr := "127.0.0.1:" + strconv.Itoa(*port)
	fmt.Fprintln(os.Stderr, "loadpump backend on", addr)
	if err := http.ListenAndServe(addr, mux); err != nil {
		fmt.Fprintln(os.Stderr, "loadpump:", err)
		os.Exit(1)
	}
}

func relay(args []string) {
	fs := flag.NewFlagSet("relay", flag.ExitOnError)
	port := fs.Int("port", 18920, "port on 127.0.0.1")
	upstream := fs.String("upstream", "http://127.0.0.1:18900", "where requests go")
	_ = fs.Parse(args)
	tr := &http.Transport{MaxIdleConns: 0, MaxIdleConnsPerHost: 4096,
		IdleConnTimeout: 30 * time.Second, DisableCompression: true}
	hc := &http.Client{Transport: tr}
	handler := func(w http.ResponseWriter, r *http.Request) {
		req, err := http.NewRequestWithContext(r.Context(), r.Method, *upstream+r.URL.Path, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		req.Header.Set("Content-Type", r.Header.Get("Content-Type"))
		resp, err := hc.Do(req)
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		flusher := w.(http.Flusher)
		buf := make([]byte, 32<<10)
		for {
			n, err := resp.Body.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					return
				}
				flusher.Flush()
			}
			if err != nil {
				return
			}
		}
	}
	addr := "127.0.0.1:" + strconv.Itoa(*port)
	fmt.Fprintln(os.Stderr, "loadpump relay on", addr, "to", *upstream)
	if err := http.ListenAndServe(addr, http.HandlerFunc(handler)); err != nil {
		fmt.Fprintln(os.Stderr, "loadpump:", err)
		os.Exit(1)
	}
}

type planned struct {
	At      float64           `json:"at"`
	Body    json.RawMessage   `json:"body"`
	Headers map[string]string `json:"headers"`
}

type outcome struct {
	TTFT     *float64 `json:"ttft"`
	Tokens   int      `json:"tokens"`
	Finished bool     `json:"finished"`
	Error    string   `json:"error,omitempty"`
	Status   int      `json:"status"`
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	url := fs.String("url", "", "the completions endpoint")
	planPath := fs.String("plan", "", "JSON lines: at, body, headers")
	drain := fs.Duration("drain", 60*time.Second, "wait this long after the last send")
	_ = fs.Parse(args)
	plan, err := readPlan(*planPath)
	if err != nil || *url == "" {
		fmt.Fprintln(os.Stderr, "loadpump client: -url and a readable -plan are needed:", err)
		os.Exit(2)
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     4 * time.Second, // under the router's keep-alive (5 s)
	}
	hc := &http.Client{Transport: tr}
	out := make([]outcome, len(plan))
	var wg sync.WaitGroup
	start := time.Now()
	for i := range plan {
		if d := time.Until(start.Add(time.Duration(plan[i].At * float64(time.Second)))); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			out[i] = send(hc, *url, &plan[i])
		}(i)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(*drain):
	}
	wall := time.Since(start).Seconds()
	enc := json.NewEncoder(os.Stdout)
	_ = enc.Encode(map[string]any{"wall_s": wall, "outcomes": out})
}

func readPlan(path string) ([]planned, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var plan []planned
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var p planned
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return nil, err
		}
		plan = append(plan, p)
	}
	return plan, sc.Err()
}

func send(hc *http.Client, url string, p *planned) outcome {
	req, err := http.NewRequest("POST", url, bytes.NewReader(p.Body))
	if err != nil {
		return outcome{Error: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range p.Headers {
		req.Header.Set(k, v)
	}
	sent := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return outcome{Error: err.Error()}
	}
	defer resp.Body.Close()
	o := outcome{Status: resp.StatusCode}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		o.Error = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, b)
		return o
	}
	rd := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := rd.ReadSlice('\n')
		if len(line) > 6 && bytes.HasPrefix(line, []byte("data: ")) {
			payload := bytes.TrimSpace(line[6:])
			if bytes.Equal(payload, []byte("[DONE]")) {
				return o
			}
			var ev struct {
				Choices []struct {
					TokenIDs     []int   `json:"token_ids"`
					FinishReason *string `json:"finish_reason"`
				} `json:"choices"`
				Error json.RawMessage `json:"error"`
			}
			if jerr := json.Unmarshal(payload, &ev); jerr != nil {
				o.Error = "malformed event: " + jerr.Error()
				return o
			}
			if ev.Error != nil {
				o.Error = string(ev.Error)
				return o
			}
			for _, ch := range ev.Choices {
				if len(ch.TokenIDs) > 0 && o.TTFT == nil {
					t := time.Since(sent).Seconds()
					o.TTFT = &t
				}
				o.Tokens += len(ch.TokenIDs)
				if ch.FinishReason != nil {
					o.Finished = true
				}
			}
		}
		if err != nil {
			if err != io.EOF {
				o.Error = err.Error()
			}
			o.Finished = o.Finished && o.Error == ""
			return o
		}
	}
}
