import Foundation
import HTTPTypes
import Hummingbird
import Synchronization

/// The status page: `GET /`, HTML rendered on the server from the store (viewer role), with a small script that
/// follows the event stream and swaps in the freshly rendered sections (`GET /?part=live`) when something changes.
/// A browser signs in at `/login` by pasting a token (an HttpOnly, SameSite=Strict cookie); a bearer token works too.
struct StatusPageController {
    let store: any ResourceStore & EventLog
    let authorizer: Authorizer
    let clock: any SpotClock
    let authOn: Bool
    /// The sections as last rendered, with the newest event id then: every open page asks again on each event, and
    /// during a mass reclaim hundreds of tabs would otherwise each read the store several times a second.
    let cache = LiveCache()

    func register(on routes: RouteBook) {
        routes.add(.get, "/", .read, signIn: true, use: page)
        routes.add(.get, "/login", .open, use: loginForm)
        routes.add(.post, "/login", .open, use: login)
        routes.add(.post, "/logout", .open, use: logout)
    }

    @Sendable func page(_ request: Request, context: AppRequestContext) async throws -> Response {
        let query = try Query(request, allowed: ["part"])
        let part = try query.string("part")
        guard part == nil || part == "live" else { throw Problem.invalidQuery("part", "must be live") }
        let now = clock.now()
        let (live, lastEventId) = try await cache.sections(now: now, lastEventId: try await store.lastEventId()) {
            let model = try await StatusModel.load(store, now: now)
            return (StatusHTML.live(model), model.lastEventId)
        }
        let html = part == nil ? StatusHTML.page(live: live, caller: context.caller, authOn: authOn, lastEventId: lastEventId) : live
        return Self.html(html)
    }

    @Sendable func loginForm(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        guard authOn else { return Response(status: .seeOther, headers: [.location: "/"]) }
        return Self.html(StatusHTML.login(error: nil))
    }

    /// `token=<token>` from the form: a token that may read signs the browser in (303 to `/`); anything else gets
    /// the form again with the reason, 401.
    @Sendable func login(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        guard authOn else { return Response(status: .seeOther, headers: [.location: "/"]) }
        guard Self.sameOrigin(request) else {
            return Self.html(StatusHTML.login(error: "Sign in from this server's own page."), status: .forbidden)
        }
        let body = try await request.collectLimited(context)
        guard body.count <= 4096, let text = String(data: body, encoding: .utf8) else {
            return Self.html(StatusHTML.login(error: "The form could not be read."), status: .badRequest)
        }
        var token: String?
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            guard parts.count == 2, parts[0] == "token" else { continue }
            token = String(parts[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding?
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let token, !token.isEmpty else {
            return Self.html(StatusHTML.login(error: "Paste a token."), status: .badRequest)
        }
        guard let caller = try await authorizer.identify(secret: token) else {
            return Self.html(StatusHTML.login(error: "That token is unknown or revoked."), status: .unauthorized)
        }
        guard Access.read.allows(caller.role) else {
            return Self.html(StatusHTML.login(error: "A \(caller.role.rawValue) token may not read the status page."), status: .forbidden)
        }
        return Response(
            status: .seeOther,
            headers: [.location: "/", .setCookie: Session.setCookie(token, secure: Session.overHTTPS(request)), .cacheControl: "no-store"])
    }

    /// Clears the session cookie and says so, with a link to sign in again.
    @Sendable func logout(_ request: Request, context: AppRequestContext) async throws -> Response {
        _ = try Query(request, allowed: [])
        guard Self.sameOrigin(request) else { return Self.html(StatusHTML.signedOut, status: .forbidden) }
        var response = Self.html(StatusHTML.signedOut)
        response.headers[.setCookie] = Session.clearCookie
        return response
    }

    /// A form post from another site (login CSRF: signing a browser into someone else's session, or out of its
    /// own) carries that site's `Origin`: only this server's own origin, or none (curl, old browsers), is taken.
    static func sameOrigin(_ request: Request) -> Bool {
        guard let origin = request.headers[HTTPField.Name("Origin")!] else { return true }
        guard let host = request.head.authority, let url = URLComponents(string: origin),
            let originHost = url.host
        else { return false }
        let port = url.port.map { ":\($0)" } ?? ""
        return (originHost + port).lowercased() == host.lowercased()
    }

    static func html(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(
            status: status,
            headers: [
                .contentType: "text/html; charset=utf-8", .cacheControl: "no-store",
                HTTPField.Name("Content-Security-Policy")!:
                    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
                HTTPField.Name("X-Content-Type-Options")!: "nosniff",
            ],
            body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}

/// What the page shows, read from the store in one go.
struct StatusModel {
    var now: Millis
    var summary: StoreSummary
    var interruptions: [InterruptionDetail]
    var moreInterruptions: Bool
    var services: [ServiceDetail]
    var moreServices: Bool
    var provisioning: [ProvisioningRequest]
    var moreProvisioning: Bool
    var events: [Event]
    var lastEventId: Int64

    static let shown = 50

    static func load(_ store: any ResourceStore & EventLog, now: Millis) async throws -> StatusModel {
        let active = try await store.activeInterruptions(limit: shown, steps: 30)
        let services = try await store.listServices(PageRequest(limit: shown))
        let provisioning = try await store.listProvisioningRequests(state: .pending, PageRequest(limit: shown))
        let last = try await store.lastEventId()
        let events = try await store.events(since: max(0, last - 20), type: nil, limit: 20)
        return StatusModel(
            now: now, summary: try await store.summary(), interruptions: active.items, moreInterruptions: active.more,
            services: services.items, moreServices: services.nextCursor != nil,
            provisioning: provisioning.items, moreProvisioning: provisioning.nextCursor != nil, events: events.reversed(), lastEventId: last
        )
    }
}

/// The page's HTML. Every value from the store goes through `escape`.
enum StatusHTML {
    static func escape(_ text: String) -> String {
        // Scalar by scalar: a quote followed by a combining mark is one Character, and must still be escaped.
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    static func time(_ millis: Millis?) -> String {
        guard let millis else { return "" }
        let text = TimeFormat.rfc3339(millis)
        return "<time datetime=\"\(escape(text))\">\(escape(String(text.dropFirst(11).prefix(8))))</time>"
    }

    static func empty(_ text: String) -> String { "<p class=\"empty\">\(escape(text))</p>" }

    static func table(_ headers: [String], _ rows: [String]) -> String {
        "<div class=\"scroll\"><table><thead><tr>" + headers.map { "<th>\(escape($0))</th>" }.joined()
            + "</tr></thead><tbody>" + rows.joined() + "</tbody></table></div>"
    }

    /// The sections the script refreshes.
    static func live(_ model: StatusModel) -> String {
        var html = ""
        let summary = model.summary
        // Pools
        html += "<section id=\"pools\"><h2>Pools</h2>"
        if summary.pools.isEmpty {
            html += empty("No pools yet. Create one with POST /v1/pools.")
        } else {
            html += table(
                ["Pool", "Type", "GPU", "Zone", "Nodes", "GPUs free", "Interruptions/node-h"],
                summary.pools.map { pool, stats in
                    let nodes = NodeState.allCases.filter { $0 != .terminated }.compactMap { state -> String? in
                        guard let count = stats.nodesByState[state], count > 0 else { return nil }
                        return "<span class=\"state \(state.rawValue)\">\(count) \(state.rawValue)</span>"
                    }
                    let rate = String(format: "%.3f", stats.interruptionRate)
                    return
                        "<tr data-pool=\"\(escape(pool.name))\"><td>\(escape(pool.name))\(pool.stockout ? " <span class=\"warn\">stockout</span>" : "")</td>"
                        + "<td>\(escape(pool.capacityType.rawValue))</td><td>\(escape(pool.gpuType))</td><td>\(escape(pool.zone))</td>"
                        + "<td>\(nodes.isEmpty ? "none" : nodes.joined(separator: " "))</td>"
                        + "<td class=\"num\">\(stats.gpusFree)/\(stats.gpusTotal)</td><td class=\"num\">\(rate)</td></tr>"
                })
        }
        html += "</section>"
        // Interruptions
        html += "<section id=\"interruptions\"><h2>Active interruptions <span class=\"count\">\(summary.activeInterruptions)</span></h2>"
        if model.interruptions.isEmpty {
            html += empty("No active interruptions.")
        } else {
            for detail in model.interruptions {
                let interruption = detail.interruption
                var heading = "Node <b>\(escape(interruption.nodeId))</b>"
                if let pool = interruption.pool { heading += " in \(escape(pool))" }
                heading +=
                    " · \(escape(interruption.source)) \(escape(interruption.kind.rawValue)) · \(escape(interruption.state.rawValue))"
                if let deadline = interruption.deadline {
                    let left = (deadline - model.now) / 1000
                    heading += " · deadline \(time(deadline))" + (left > 0 ? " (in \(left) s)" : " (passed)")
                }
                html +=
                    "<div class=\"interruption\" data-interruption=\"\(escape(interruption.id))\" data-node=\"\(escape(interruption.nodeId))\">"
                html += "<h3>\(heading)</h3><ol class=\"timeline\">"
                for step in detail.timeline {
                    var text = escape(step.step.replacingOccurrences(of: "_", with: " "))
                    if let job = step.jobId { text += " · job \(escape(job))" }
                    if let detail = step.detail { text += " · \(escape(detail))" }
                    html += "<li data-step=\"\(escape(step.step))\">\(time(step.at)) \(text)</li>"
                }
                html += "</ol></div>"
            }
            if model.moreInterruptions { html += "<p class=\"more\">More are active: GET /v1/interruptions lists them all.</p>" }
        }
        html += "</section>"
        // Jobs by tier and state
        html += "<section id=\"jobs\"><h2>Jobs</h2>"
        let states = JobState.allCases
        if summary.jobs.values.allSatisfy({ $0.values.allSatisfy { $0 == 0 } }) {
            html += empty("No jobs yet.")
        } else {
            html += table(
                ["Tier"] + states.map(\.rawValue),
                Tier.allCases.map { tier in
                    "<tr data-tier=\"\(tier.rawValue)\"><td>\(tier.rawValue)</td>"
                        + states.map { "<td class=\"num\">\(summary.jobs[tier]?[$0] ?? 0)</td>" }.joined() + "</tr>"
                })
        }
        html += "</section>"
        // Services
        html += "<section id=\"services\"><h2>Services</h2>"
        if model.services.isEmpty {
            html += empty("No inference services.")
        } else {
            html += table(
                ["Service", "Tier", "Ready", "Leaving"],
                model.services.map { detail in
                    let leaving = detail.members.filter { $0.doomedAt != nil && $0.state != .gone }.count
                    return "<tr data-service=\"\(escape(detail.service.id))\"><td>\(escape(detail.service.id))</td>"
                        + "<td>\(detail.service.tier.rawValue)</td><td class=\"num\">\(detail.readyReplicas)/\(detail.service.replicas)</td>"
                        + "<td class=\"num\">\(leaving)</td></tr>"
                })
            if model.moreServices { html += "<p class=\"more\">More: GET /v1/services.</p>" }
        }
        html += "</section>"
        // Provisioning
        html += "<section id=\"provisioning\"><h2>Provisioning <span class=\"count\">\(summary.pendingProvisioning)</span></h2>"
        if model.provisioning.isEmpty {
            html += empty("No provisioning requests in flight.")
        } else {
            html += table(
                ["Request", "Pool", "Reason", "Asked", "Calls", "Last error"],
                model.provisioning.map { request in
                    "<tr data-request=\"\(escape(request.id))\"><td>\(escape(request.id))</td><td>\(escape(request.pool))</td>"
                        + "<td>\(escape(request.reason))</td><td>\(time(request.createdAt))</td><td class=\"num\">\(request.attempts)</td>"
                        + "<td>\(escape(request.lastError ?? ""))</td></tr>"
                })
            if model.moreProvisioning { html += "<p class=\"more\">More: GET /v1/provisioning-requests?state=pending.</p>" }
        }
        html += "</section>"
        // Latest events
        html += "<section id=\"events\"><h2>Latest events</h2>"
        if model.events.isEmpty {
            html += empty("No events yet.")
        } else {
            html += "<ol class=\"events\">" + model.events.map(eventItem).joined() + "</ol>"
        }
        html += "</section>"
        return html
    }

    static func eventItem(_ event: Event) -> String {
        "<li data-event-id=\"\(event.id)\">\(time(event.at)) <b>\(escape(event.type))</b> \(escape(event.subject)) <span class=\"actor\">by \(escape(event.actor))</span></li>"
    }

    static func page(live: String, caller: Caller, authOn: Bool, lastEventId: Int64) -> String {
        let who =
            authOn
            ? "signed in as \(escape(caller.name)) (\(caller.role.rawValue)) · <form method=\"post\" action=\"/logout\"><button>Sign out</button></form>"
            : "auth off (loopback)"
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>spotd status</title><style>\(style)</style></head>
            <body><header><h1>spotd</h1><span id="conn" class="conn">connecting…</span><span class="who">\(who)</span></header>
            <main id="live" data-last-event-id="\(lastEventId)">\(live)</main>
            <footer>spotd \(SpotVersion.current) · JSON: <a href="/v1/summary">/v1/summary</a> · <a href="/metrics">/metrics</a></footer>
            <script>\(script)</script></body></html>
            """
    }

    static let signedOut = """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
        <title>spotd signed out</title><style>\(style)</style></head>
        <body><header><h1>spotd</h1></header><main><section><h2>Signed out</h2>
        <p><a href="/login">Sign in again</a></p></section></main></body></html>
        """

    static func login(error: String?) -> String {
        """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
        <title>spotd sign in</title><style>\(style)</style></head>
        <body><header><h1>spotd</h1></header><main><section><h2>Sign in</h2>
        \(error.map { "<p class=\"error\">\(escape($0))</p>" } ?? "")
        <form method="post" action="/login"><label for="token">API token (viewer or above)</label>
        <input id="token" name="token" type="password" autocomplete="off" required>
        <button type="submit">Sign in</button></form>
        <p class="empty">The token is kept in an HttpOnly cookie for 12 hours; revoking the token ends the session.</p>
        </section></main></body></html>
        """
    }

    static let style = """
        *{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,sans-serif;color:#1d2330;background:#f5f6f8}
        header{display:flex;flex-wrap:wrap;gap:.5em 1em;align-items:baseline;padding:.6em 1em;background:#1d2330;color:#fff}
        header h1{margin:0;font-size:1.2em}header form{display:inline}header button{font:inherit;font-size:.85em}
        .conn{font-size:.85em;color:#f5c16c}.conn.live{color:#7fd68b}.who{margin-left:auto;font-size:.85em;color:#c9cfda}
        main{padding:.5em 1em;max-width:1200px}section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:.8em 0;padding:.6em .9em}
        h2{font-size:1.05em;margin:.2em 0 .5em}h3{font-size:.95em;font-weight:normal;margin:.3em 0;overflow-wrap:anywhere}
        .count{display:inline-block;min-width:1.6em;padding:0 .4em;border-radius:1em;background:#e7eaf0;text-align:center;font-size:.85em}
        .scroll{overflow-x:auto}table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #eef0f3;white-space:nowrap}
        th{font-size:.8em;text-transform:uppercase;color:#5a6478}td.num{text-align:right;font-variant-numeric:tabular-nums}
        .state{display:inline-block;padding:0 .4em;border-radius:3px;background:#e7eaf0;font-size:.85em}.state.ready{background:#d8f0dc}
        .state.cordoned,.state.draining{background:#fde6c4}.state.drained{background:#f6d5d5}.warn{color:#b3261e;font-size:.85em}
        .interruption{border-left:3px solid #e8a33d;padding-left:.6em;margin:.5em 0}.timeline{margin:.2em 0;padding-left:1.2em}.events{margin:.2em 0;padding-left:0;list-style:none}
        .timeline li,.events li{overflow-wrap:anywhere}time{color:#5a6478;font-variant-numeric:tabular-nums}.actor{color:#5a6478}
        .empty,.more{color:#5a6478;font-style:italic}.error{color:#b3261e}footer{padding:1em;color:#5a6478;font-size:.85em}
        label{display:block;margin-bottom:.3em}input{width:100%;max-width:32em;font:inherit;padding:.4em}button{margin-top:.5em;font:inherit}
        """

    /// Follows the event stream (a `fetch` reader: every event type arrives, and the session cookie goes along);
    /// each event is listed at once, and the sections are fetched again, at most every 300 ms. On a break it
    /// reconnects from the last event seen.
    static let script = """
        (function(){
        var main=document.getElementById('live'),conn=document.getElementById('conn');
        var last=main.getAttribute('data-last-event-id')||'0',pending=false,busy=false;
        function refresh(){if(busy){pending=true;return}busy=true;pending=false;
          fetch('/?part=live',{credentials:'same-origin',cache:'no-store'}).then(function(r){
            if(r.status===303||r.redirected||r.status===401){location.href='/login';return null}return r.ok?r.text():null})
          .then(function(t){if(t!==null&&t!==undefined)main.innerHTML=t}).catch(function(){})
          .then(function(){busy=false;if(pending)setTimeout(refresh,300)})}
        var timer=null;function soon(){if(!timer)timer=setTimeout(function(){timer=null;refresh()},300)}
        function show(ev){var list=document.querySelector('#events ol');if(!list)return;var li=document.createElement('li');
          li.setAttribute('data-event-id',ev.id);var b=document.createElement('b');b.textContent=ev.type;
          li.appendChild(document.createTextNode((ev.at||'').slice(11,19)+' '));li.appendChild(b);
          li.appendChild(document.createTextNode(' '+ev.subject+' by '+ev.actor));list.insertBefore(li,list.firstChild)}
        function handle(block){var id=null,data='';block.split('\\n').forEach(function(line){
          if(line.indexOf('id: ')===0)id=line.slice(4);else if(line.indexOf('data: ')===0)data+=line.slice(6)});
          if(id!==null)last=id;if(data){try{show(JSON.parse(data))}catch(e){}soon()}}
        function connect(){fetch('/v1/events/stream?since='+encodeURIComponent(last),{credentials:'same-origin',cache:'no-store'})
          .then(function(r){if(!r.ok||!r.body)throw new Error('stream '+r.status);conn.textContent='live';conn.className='conn live';
            var reader=r.body.getReader(),decoder=new TextDecoder(),buf='';
            function pump(){return reader.read().then(function(x){if(x.done)throw new Error('ended');
              buf+=decoder.decode(x.value,{stream:true});var i;while((i=buf.indexOf('\\n\\n'))>=0){handle(buf.slice(0,i));buf=buf.slice(i+2)}
              return pump()})}return pump()})
          .catch(function(){conn.textContent='reconnecting…';conn.className='conn';setTimeout(function(){refresh();connect()},2000)})}
        connect();})();
        """
}

/// The status page's sections, rendered at most once per second while no event is written: every page rendered in
/// that time shares one rendering. A new event renders them again.
final class LiveCache: Sendable {
    private let state = Mutex<(lastEventId: Int64, at: Millis, html: String)?>(nil)
    static let maxAge: Millis = 1000

    func sections(now: Millis, lastEventId: Int64, render: () async throws -> (String, Int64)) async throws -> (String, Int64) {
        if let cached = state.withLock({ $0 }), cached.lastEventId == lastEventId, now - cached.at < Self.maxAge, now >= cached.at {
            return (cached.html, cached.lastEventId)
        }
        let (html, rendered) = try await render()
        state.withLock { $0 = (rendered, now, html) }
        return (html, rendered)
    }
}
