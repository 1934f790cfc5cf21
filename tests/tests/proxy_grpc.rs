//! gRPC through the L7 proxy under `enforcer run`, with a real gRPC server and client (grpcio:
//! Debian's python3-grpcio, run with /usr/bin/python3; tests/helpers/grpc_server.py and
//! grpc_client.py). The ServiceEntry port is declared GRPC (targetPort 8443) with a
//! DestinationRule SIMPLE: the app sends h2c gRPC (an insecure channel) to the registered
//! address, the proxy originates TLS (h2 by ALPN) to the server, and `istio_requests_total`
//! records `request_protocol="grpc"` with the gRPC status of each call (OK, and the unary
//! errors NOT_FOUND / PERMISSION_DENIED, which travel as HTTP 200 with `grpc-status` in a
//! trailers-only response).

use enforcer_tests::*;
use serde_json::json;

const GRPC_SERVER_PY: &str = include_str!("../helpers/grpc_server.py");
const GRPC_CLIENT_PY: &str = include_str!("../helpers/grpc_client.py");

#[test]
fn grpc_h2c_from_the_app_is_originated_as_h2_over_tls_and_grpc_statuses_are_recorded() {
    let ns = Netns::new();
    let dir = TempDir::new("proxy-grpc");
    let pki = Pki::new(&dir, "grpc", &["grpc.test"]);
    let addr = ns.v4(2);
    let py = system_python_with("grpc", "python3-grpcio");
    let mut c = ns.command(&py);
    c.arg("-c").arg(GRPC_SERVER_PY).arg(&addr).arg("8443").arg(&pki.cert).arg(&pki.key);
    let _srv = Server::start(c, &format!("gRPC server {addr}:8443 in netns {}", ns.name));
    let docs = vec![
        se_at("default", "grpc", &["grpc.test"], &addr, &[(80, "GRPC", Some(8443))]),
        dr("default", "grpc", "grpc.test", &simple_tls_on(80, &pki.ca, None)),
    ];
    let target = format!("{addr}:80");
    let client = json!({"kind": "cmd", "argv": [
        py, "-c", GRPC_CLIENT_PY, target, "grpc.test", "hello", "missing", "again", "denied"
    ]});
    let run = ProxyRun::go(&dir, &docs, &[], json!({"ops": [client], "requests": 4}));
    let d = run.dump();
    let r = &run.results[0];
    assert_eq!(r["rc"], 0, "{d}");
    let calls: serde_json::Value = serde_json::from_str(r["stdout"].as_str().unwrap().trim())
        .unwrap_or_else(|e| panic!("the gRPC client printed no JSON ({e})\n{d}"));
    assert_eq!(calls[0]["ok"], "echo hello", "{d}");
    assert_eq!(calls[1]["code"], "NOT_FOUND", "{d}");
    assert_eq!(calls[1]["details"], "no such item", "{d}");
    assert_eq!(calls[2]["ok"], "echo again", "{d}");
    assert_eq!(calls[3]["code"], "PERMISSION_DENIED", "{d}");
    let grpc = |status: &str| {
        run.metric(
            "istio_requests_total",
            &[
                ("destination_service", "grpc.test"),
                ("request_protocol", "grpc"),
                ("response_code", "200"),
                ("grpc_response_status", status),
            ],
        )
    };
    assert_eq!(grpc("0"), 2.0, "two OK calls\n{d}");
    assert_eq!(grpc("5"), 1.0, "one NOT_FOUND\n{d}");
    assert_eq!(grpc("7"), 1.0, "one PERMISSION_DENIED\n{d}");
    assert_eq!(run.metric("istio_requests_total", &[]), 4.0, "every call is one request, nothing else\n{d}");
    assert!(!run.out.stderr.contains("enforcer: error"), "{d}");
}
