#include "server/http_server.h"

#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "server/connection_pool.h"
#include "server/routes.h"

namespace philora::server {

using nlohmann::json;

namespace {

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Debian's libcpp-httplib is compiled with a listen backlog of 5: a burst of
// clients overflows it, the kernel drops their SYNs and ACKs, and connections
// accepted late come with requests the server then waits for in vain. The
// library keeps its socket to itself, so find the listening socket bound to
// `port` among our descriptors and listen again with the system's maximum
// (Linux lets listen() change the backlog of a listening socket).
void raise_listen_backlog(int port) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    const std::string name = entry.path().filename().string();
    char* end = nullptr;
    const long fd = std::strtol(name.c_str(), &end, 10);
    if (end == name.c_str() || *end != '\0') continue;
    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(int(fd), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening)
      continue;
    sockaddr_storage addr{};
    socklen_t alen = sizeof addr;
    if (getsockname(int(fd), reinterpret_cast<sockaddr*>(&addr), &alen) != 0) continue;
    int bound = -1;
    if (addr.ss_family == AF_INET) bound = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    if (addr.ss_family == AF_INET6)
      bound = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
    if (bound == port) ::listen(int(fd), SOMAXCONN);
  }
}

// A request id from the client, kept when it is short and printable without
// quoting; anything else is replaced by one of ours.
bool valid_request_id(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == ':' || c == '/' || c == '+' || c == '=';
  });
}

// Compares in time independent of where the strings first differ.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= uint8_t(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

// Makes the server close the connection after this response (the request's
// body was not read to its end, or the connection is over the limit):
// httplib decides that from the request's own Connection header, and the
// Request it hands to handlers is non-const underneath.
void close_after(const httplib::Request& req) {
  auto& r = const_cast<httplib::Request&>(req);
  r.headers.erase("Connection");
  r.headers.emplace("Connection", "close");
}

// Read and dropped past the body limit before giving up on a connection.
constexpr size_t kMaxDiscardBytes = size_t(64) << 20;

std::string iso_time_now() {
  const auto now = std::chrono::system_clock::now();
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z",
                     fmt::gmtime(std::chrono::system_clock::to_time_t(now)), int(ms));
}

}  // namespace

std::vector<std::string> available_adapters(const ServerContext& ctx) {
  std::vector<std::string> names = ctx.adapters;
  if (ctx.adapter_dir.empty()) return names;
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(ctx.adapter_dir, ec)) {
    std::error_code file_ec;
    if (e.is_directory(file_ec) &&
        std::filesystem::is_regular_file(e.path() / "adapter_config.json", file_ec))
      found.push_back(e.path().filename().string());
  }
  std::sort(found.begin(), found.end());
  for (std::string& name : found)
    if (std::find(names.begin(), names.end(), name) == names.end())
      names.push_back(std::move(name));
  return names;
}

bool is_available_adapter(const ServerContext& ctx, const std::string& adapter) {
  const std::vector<std::string> names = available_adapters(ctx);
  return std::find(names.begin(), names.end(), adapter) != names.end();
}

// The checks and bookkeeping every route shares (see http_server.h).
struct HttpServer::Gate {
  enum class Kind {
    health,    // no key; any state
    metrics,   // the key; any state
    info,      // the key; 503 while loading
    generate,  // the key; 503 unless ready; counted in flight; over the connection limit: 503
  };

  // The call of one request: its id echoed, its log line and counters when it is done.
  static CallPtr begin(HttpServer& s, const httplib::Request& req, httplib::Response& res,
                       const std::string& route) {
    auto call = std::make_shared<Call>();
    call->start = std::chrono::steady_clock::now();
    call->route = route;
    call->method = req.method;
    call->remote = req.remote_addr;
    const std::string given = req.get_header_value("X-Request-Id");
    call->request_id = valid_request_id(given) ? given : fmt::format("req-{}", s.next_id_++);
    res.set_header("X-Request-Id", call->request_id);
    call->on_done = [&s](Call& c) { s.done(c); };
    return call;
  }

  // Whether the request may go on; else the response is set.
  static bool admit(HttpServer& s, Kind kind, Api api, const httplib::Request& req,
                    httplib::Response& res) {
    if (kind != Kind::health && !s.options_.api_key.empty()) {
      const std::string auth = req.get_header_value("Authorization");
      const std::string prefix = "Bearer ";
      if (auth.compare(0, prefix.size(), prefix) != 0 ||
          !same_secret(auth.substr(prefix.size()), s.options_.api_key)) {
        res.set_header("WWW-Authenticate", "Bearer");
        send_error(res, api, 401,
                   auth.empty() ? "missing API key: send 'Authorization: Bearer KEY'"
                                : "incorrect API key",
                   api == Api::openai ? "invalid_request_error" : "authentication",
                   api == Api::openai ? "invalid_api_key" : nullptr);
        return false;
      }
    }
    const State state = s.state_.load(std::memory_order_acquire);
    if (kind == Kind::health || kind == Kind::metrics) return true;
    if (state == State::loading) {
      res.set_header("Retry-After", "5");
      send_error(res, api, 503, "the model is loading; retry later", "unavailable");
      return false;
    }
    if (kind != Kind::generate) return true;
    if (state == State::draining) {
      close_after(req);
      send_error(res, api, 503, "the server is shutting down", "unavailable");
      return false;
    }
    if (ConnectionPool::overflowing()) {
      close_after(req);
      res.set_header("Retry-After", "1");
      send_error(
          res, api, 503,
          fmt::format("too many connections (at most {}); retry later", s.options_.max_connections),
          "overloaded");
      return false;
    }
    return true;
  }

  // Reads the body under the limit into call.body; else answers 413 or 400.
  static bool read_body(HttpServer& s, Api api, const httplib::Request& req, httplib::Response& res,
                        const httplib::ContentReader& reader, Call& call) {
    const size_t limit = s.options_.max_body_bytes;
    bool too_big = false;
    size_t dropped = 0;
    const bool ok = reader([&](const char* data, size_t n) {
      if (!too_big && call.body.size() + n <= limit) {
        call.body.append(data, n);
        return true;
      }
      if (!too_big) std::string().swap(call.body);
      too_big = true;
      dropped += n;
      return dropped <= kMaxDiscardBytes;  // read and drop the rest, up to a point
    });
    if (too_big || res.status == 413) {
      if (!ok) close_after(req);
      send_error(
          res, api, 413,
          fmt::format("the request body is larger than this server's limit of {} bytes", limit),
          api == Api::openai ? "invalid_request_error" : "validation");
      return false;
    }
    if (!ok) {
      close_after(req);
      send_error(res, api, 400, "the request body could not be read",
                 api == Api::openai ? "invalid_request_error" : "validation");
      return false;
    }
    return true;
  }
};

HttpServer::HttpServer(HttpOptions options)
    : options_(std::move(options)), http_(std::make_unique<httplib::Server>()) {
  const int max_connections = options_.max_connections;
  http_->new_task_queue = [max_connections] { return new ConnectionPool(max_connections); };
  http_->set_payload_max_length(options_.max_body_bytes);
  http_->set_keep_alive_max_count(1000);  // httplib's 5 makes busy clients reconnect
  routes();
}

HttpServer::HttpServer(ServerContext ctx, HttpOptions options) : HttpServer(std::move(options)) {
  serve(std::move(ctx));
}

HttpServer::~HttpServer() { stop(); }

void HttpServer::serve(ServerContext ctx) {
  ctx_ = std::move(ctx);
  state_.store(State::ready, std::memory_order_release);
}

bool HttpServer::drain(std::chrono::milliseconds grace) {
  // The listener stays open meanwhile (httplib's stop() would also cut the
  // streams short): /health says draining, and new requests get a 503.
  state_.store(State::draining, std::memory_order_release);
  std::unique_lock<std::mutex> lock(drain_mu_);
  return drained_.wait_for(lock, grace, [&] { return in_flight_.load() == 0; });
}

void HttpServer::stop() {
  // httplib's stop() closes the socket only once its listen loop runs: a stop
  // that came between start() and the loop's first step would leave the thread
  // in accept() for good. Wait for the loop (or the thread's end) first.
  if (thread_ && http_)
    while (!http_->is_running() && !listener_done_.load(std::memory_order_acquire))
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (http_) http_->stop();
  if (thread_ && thread_->joinable()) thread_->join();
  thread_.reset();
}

Status HttpServer::listen(const std::string& host, int port) {
  if (!http_->bind_to_port(host, port)) return Status::errorf("cannot listen on {}:{}", host, port);
  raise_listen_backlog(port);
  if (!http_->listen_after_bind()) return Status::errorf("cannot listen on {}:{}", host, port);
  return Status();
}

Expected<int> HttpServer::start(const std::string& host, int port) {
  int bound = port;
  if (port == 0) {
    bound = http_->bind_to_any_port(host);
    if (bound < 0) return Status::errorf("cannot bind {}", host);
  } else if (!http_->bind_to_port(host, port)) {
    return Status::errorf("cannot bind {}:{}", host, port);
  }
  raise_listen_backlog(bound);
  listener_done_.store(false, std::memory_order_release);
  thread_ = std::make_unique<std::thread>([this] {
    http_->listen_after_bind();
    listener_done_.store(true, std::memory_order_release);
  });
  return bound;
}

// The access-log line and the counters of a finished call.
void HttpServer::done(Call& c) {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - c.start).count();
  // The adapter as a label: names the server knows, or that ran; a name a
  // client made up is not a label value (one series per made-up name).
  std::string adapter = c.adapter;
  const State state = state_.load(std::memory_order_acquire);
  if (!adapter.empty() && c.output_tokens == 0 &&
      (state == State::loading || !is_available_adapter(ctx_, adapter)))
    adapter = "unknown";
  requests_.add({c.route, std::to_string(c.status), adapter});
  if (c.status == 200 && !c.finish_reason.empty()) finished_.add({c.finish_reason});
  if (options_.access_log) {
    using ojson = nlohmann::ordered_json;
    auto or_null = [](const std::string& v) { return v.empty() ? ojson(nullptr) : ojson(v); };
    ojson line = {{"time", iso_time_now()},
                  {"request_id", c.request_id},
                  {"method", c.method},
                  {"route", c.route},
                  {"remote", c.remote},
                  {"adapter", or_null(c.adapter)},
                  {"prompt_tokens", c.prompt_tokens},
                  {"output_tokens", c.output_tokens},
                  {"status", c.status},
                  {"finish_reason", or_null(c.finish_reason)},
                  {"latency_ms", std::round(seconds * 1e4) / 10}};
    options_.access_log(line.dump(-1, ' ', false, json::error_handler_t::replace));
  }
}

void HttpServer::routes() {
  using Kind = Gate::Kind;
  // A generation route: body, gate, handler; in flight until its call is done.
  AddRoute add = [this](const std::string& path, Api api, Handler handler) {
    http_->Post(
        path, [this, path, api, handler](const httplib::Request& req, httplib::Response& res,
                                         const httplib::ContentReader& reader) {
          CallPtr call = Gate::begin(*this, req, res, path);
          if (!Gate::read_body(*this, api, req, res, reader, *call) ||
              !Gate::admit(*this, Kind::generate, api, req, res)) {
            call->status = res.status;
            return;
          }
          ++in_flight_;
          call->on_done = [this](Call& c) {
            done(c);
            std::lock_guard<std::mutex> lock(drain_mu_);
            if (--in_flight_ == 0) drained_.notify_all();
          };
          handler(call, req, res);
          call->status = res.status == -1 ? 200 : res.status;  // a stream: 200 once it starts
        });
  };
  IdSource next_id = [this] { return fmt::format("req-{}", next_engine_id_++); };
  add_info_routes();
  add_lorax_routes(add, ctx_, next_id);
  add_openai_routes(add, ctx_, next_id);
  add_tokenize_routes(add, ctx_);
  add_error_handlers();
}

// GET routes: /health, /info, /v1/models, /metrics.
void HttpServer::add_info_routes() {
  using Kind = Gate::Kind;
  auto get = [this](const std::string& path, Kind kind, Api api,
                    std::function<void(httplib::Response&)> body) {
    http_->Get(path,
               [this, path, kind, api, body](const httplib::Request& req, httplib::Response& res) {
                 CallPtr call = Gate::begin(*this, req, res, path);
                 if (Gate::admit(*this, kind, api, req, res)) body(res);
                 call->status = res.status == -1 ? 200 : res.status;
               });
  };
  get("/health", Kind::health, Api::lorax, [this](httplib::Response& res) {
    const State state = state_.load(std::memory_order_acquire);
    if (state != State::ready) res.status = 503;
    const char* s = state == State::ready ? "ok" : state == State::loading ? "loading" : "draining";
    res.set_content(json_text({{"status", s}}), "application/json");
  });
  get("/info", Kind::info, Api::lorax, [this](httplib::Response& res) {
    json j = {
        {"model_id", ctx_.model_name},
        {"max_total_tokens", ctx_.limits.max_total_tokens},
        {"max_input_length", ctx_.limits.input_limit()},
        {"max_stop_sequences", ctx_.limits.max_stop_sequences},
        {"max_client_batch_size", 1},
        {"max_best_of", ctx_.limits.max_n},
        {"speculate", ctx_.speculate},  // TGI / LoRAX: speculative tokens per step
        {"speculate_method", ctx_.speculate_method.empty() ? nlohmann::json(nullptr)
                                                           : nlohmann::json(ctx_.speculate_method)},
        {"speculate_paths", ctx_.speculate ? ctx_.speculate_paths : 0},  // tree speculation
        {"version", "0.1.0"},
        {"docker_label", nullptr},
        {"sha", nullptr}};
    res.set_content(json_text(j), "application/json");
  });
  get("/v1/models", Kind::info, Api::openai, [this](httplib::Response& res) {
    const int64_t created = now_seconds();
    json data = json::array({{{"id", ctx_.model_name},
                              {"object", "model"},
                              {"created", created},
                              {"owned_by", "philora"},
                              {"max_model_len", ctx_.limits.max_total_tokens}}});
    for (const std::string& a : available_adapters(ctx_))  // read now: added ones too
      data.push_back({{"id", a},
                      {"object", "model"},
                      {"created", created},
                      {"owned_by", "philora"},
                      {"parent", ctx_.model_name}});
    res.set_content(json_text({{"object", "list"}, {"data", data}}), "application/json");
  });
  // Served while loading too (the HTTP counters only until the engine is there).
  get("/metrics", Kind::metrics, Api::lorax, [this](httplib::Response& res) {
    std::string m;
    metric_header(m, "philora_http_requests_total", "counter",
                  "HTTP requests answered, by route, status and adapter.");
    requests_.render(m, "philora_http_requests_total");
    metric_header(m, "vllm:request_success_total", "counter",
                  "Generations that ended normally, by finish reason.");
    finished_.render(m, "vllm:request_success_total", {{"model_name", ctx_.model_name}});
    if (state_.load(std::memory_order_acquire) != State::loading && ctx_.host)
      m += ctx_.host->metrics_text();
    res.set_content(m, "text/plain; version=0.0.4");
  });
}

// JSON bodies for unknown routes, for what httplib answers itself (a request
// it could not parse), and for exceptions; each is logged and counted too.
void HttpServer::add_error_handlers() {
  http_->set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a route's own error
    CallPtr call = Gate::begin(*this, req, res, res.status == 404 ? "unmatched" : "invalid");
    call->status = res.status;
    const Api api = req.path.rfind("/v1/", 0) == 0 ? Api::openai : Api::lorax;
    const std::string message = res.status == 404
                                    ? fmt::format("{} {}: no such route", req.method, req.path)
                                    : fmt::format("HTTP {}", res.status);
    res.set_content(json_text(error_json(api, message, res.status == 404 ? "not_found" : "http")),
                    "application/json");
  });
  // An exception out of a handler: the client gets "internal error" and the
  // request id, the server's log the exception's text (which may name files).
  http_->set_exception_handler(
      [this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        std::string id = res.get_header_value("X-Request-Id");
        if (id.empty()) {
          const std::string given = req.get_header_value("X-Request-Id");
          id = valid_request_id(given) ? given : fmt::format("req-{}", next_id_++);
          res.set_header("X-Request-Id", id);
        }
        if (ctx_.log)
          ctx_.log(fmt::format("request {}: {} {}: exception: {}", id, req.method, req.path, what));
        const Api api = req.path.rfind("/v1/", 0) == 0 ? Api::openai : Api::lorax;
        res.status = 500;
        res.set_content(json_text(error_json(api, fmt::format("internal error (request id {})", id),
                                             api == Api::openai ? "server_error" : "internal")),
                        "application/json");
      });
}

}  // namespace philora::server
