//! The console's server side over HTTP, against a real `sluice serve` and
//! the Maximo emulator: sign-in and sessions, the connect flow (tested
//! live, plain-words failures, nothing saved on failure, credentials
//! sealed in the store, usable without a restart and after one, refused
//! under another key), connect links (one form only, once, expiring,
//! forged), escaping of a connector's help texts, and a `read` token's
//! session refused a change. The browser side is `tests/console/run`.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

#[path = "common/serve.rs"]
mod serve;
use serve::BIN;

const KEY: [u8; 32] = [42u8; 32];

/// An HTML form's body (reqwest's `form` feature is not built here).
trait FormBody {
    fn form_of<K: AsRef<str>, V: AsRef<str>>(self, fields: &[(K, V)]) -> Self;
}

impl FormBody for reqwest::RequestBuilder {
    fn form_of<K: AsRef<str>, V: AsRef<str>>(self, fields: &[(K, V)]) -> Self {
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in fields {
            body.append_pair(k.as_ref(), v.as_ref());
        }
        self.header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body.finish())
    }
}

struct Server {
    child: std::process::Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(db: &str, connectors: &str, key: &[u8]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .env("SLUICE_DB", db)
        .env("SLUICE_CONNECTORS_DIR", connectors)
        // The emulator listens on loopback, which links may not reach otherwise.
        .env("SLUICE_CONNECT_LINK_ALLOW", "127.0.0.1/32")
        .env(
            "SLUICE_CREDENTIALS_KEY",
            base64::engine::general_purpose::STANDARD.encode(key),
        );
    let (child, base, log) = serve::spawn(cmd);
    Server { child, base, log }
}

fn token(db: &str, name: &str, scope: &str) -> String {
    let o = Command::new(BIN)
        .args(["token", "create", "--name", name, "--scope", scope])
        .env("SLUICE_DB", db)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Signs in; the session cookie (`name=value`).
async fn sign_in(http: &reqwest::Client, base: &str, token: &str) -> String {
    let res = http
        .post(format!("{base}/login"))
        .form_of(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let set = res.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    // Plain http (no proxy saying https): a cookie the browser sends back.
    assert!(!set.contains("Secure"), "{set}");
    // Behind a TLS proxy the cookie is `Secure`.
    let res = http
        .post(format!("{base}/login"))
        .header("x-forwarded-proto", "https")
        .form_of(&[("token", token)])
        .send()
        .await
        .unwrap();
    let behind = res.headers()[SET_COOKIE].to_str().unwrap();
    assert!(behind.contains("; Secure"), "{behind}");
    set.split(';').next().unwrap().to_string()
}

/// A page's body, with its status.
async fn page(http: &reqwest::Client, url: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut req = http.get(url);
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let res = req.send().await.unwrap();
    (res.status(), res.text().await.unwrap())
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    html[at..].split('"').next().unwrap().to_string()
}

async fn post_form(
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> (StatusCode, String, Option<String>) {
    let mut req = http.post(url).form_of(fields);
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let res = req.send().await.unwrap();
    let location = res
        .headers()
        .get(LOCATION)
        .map(|l| l.to_str().unwrap().to_string());
    (res.status(), res.text().await.unwrap(), location)
}

async fn api(
    http: &reqwest::Client,
    s: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http
        .request(method.parse().unwrap(), format!("{}{path}", s.base))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_connect_flow_and_connect_links_test_seal_and_install_connections() {
    let emu = sluice_emulators::maximo::start(12).await;
    let good = sluice_emulators::maximo::API_KEY;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/sluice.db", dir.path().display());
    // The built-in definitions plus one whose help texts hold markup.
    let connectors = dir.path().join("connectors");
    std::fs::create_dir(&connectors).unwrap();
    let maximo = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/connectors/maximo.yaml"
    ))
    .unwrap();
    let hostile = maximo
        .replace("id: maximo", "id: hostile")
        .replace(
            "description: Work orders (read, create, update) and assets; API key header.",
            "description: \"<script>alert('d')</script>\"",
        )
        .replace(
            "e.g. https://maximo.example.com",
            "\"<img src=x onerror=alert(1)>\"",
        );
    std::fs::write(connectors.join("hostile.yaml"), hostile).unwrap();
    let admin = token(&db, "admin", "admin");
    let reader = token(&db, "reader", "read");
    let s = start(&db, connectors.to_str().unwrap(), &KEY);
    let http = client();
    let cookie = sign_in(&http, &s.base, &admin).await;

    // The catalog, and a form made from the definition with its help texts.
    let (status, html) = page(&http, &format!("{}/connect", s.base), Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("IBM Maximo Manage"), "{html}");
    assert!(
        !html.contains("<script>alert"),
        "help text not escaped: {html}"
    );
    assert!(html.contains("&lt;script&gt;"), "{html}");
    let (_, html) = page(&http, &format!("{}/connect/hostile", s.base), Some(&cookie)).await;
    assert!(!html.contains("<img src=x"), "{html}");
    let (status, html) = page(&http, &format!("{}/connect/maximo", s.base), Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Site of created work orders"), "{html}");
    assert!(
        html.contains("name=\"credential.api_key\" type=\"password\""),
        "{html}"
    );
    let csrf = csrf_of(&html);
    let url = format!("{}/connect/maximo", s.base);
    let form = |key: &'static str, base: String| {
        vec![
            ("connection_id".to_string(), "mx".to_string()),
            ("param.base_url".to_string(), base),
            ("param.site".to_string(), "BEDFORD".to_string()),
            ("credential.api_key".to_string(), key.to_string()),
        ]
    };
    let with = |mut f: Vec<(String, String)>, csrf: &str| {
        f.push(("csrf".into(), csrf.to_string()));
        f
    };
    let post = |f: Vec<(String, String)>| {
        let http = http.clone();
        let url = url.clone();
        let cookie = cookie.clone();
        async move {
            let res = http
                .post(&url)
                .header(COOKIE, cookie)
                .form_of(&f)
                .send()
                .await
                .unwrap();
            let location = res
                .headers()
                .get(LOCATION)
                .map(|l| l.to_str().unwrap().to_string());
            (res.status(), res.text().await.unwrap(), location)
        }
    };

    // A wrong key: said in plain words, the key not echoed, nothing saved.
    let (status, html, _) = post(with(form("wrong-key-9876", emu.base_url.clone()), &csrf)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{html}");
    assert!(html.contains("Wrong credentials"), "{html}");
    assert!(
        !html.contains("wrong-key-9876"),
        "the key came back: {html}"
    );
    assert!(html.contains("BEDFORD"), "the parameters are kept: {html}");
    // Unreachable: said too.
    let (status, html, _) = post(with(form(good, "http://127.0.0.1:9".into()), &csrf)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("could not be reached"), "{html}");
    let (_, list) = api(&http, &s, &admin, "GET", "/v1/connections", None).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "only the sandbox: {list}"
    );
    // Without the CSRF token: refused.
    let (status, html, _) = post(form(good, emu.base_url.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{html}");

    // The right key: tested, saved, and usable at once.
    let (status, html, location) = post(with(form(good, emu.base_url.clone()), &csrf)).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{html}");
    assert_eq!(location.as_deref(), Some("/connections/mx"));
    let (status, report) = api(
        &http,
        &s,
        &admin,
        "POST",
        "/v1/connections/mx/syncs",
        Some(json!({"entity": "work_order"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["added"], 12, "{report}");
    // An entity Maximo does not serve: refused as a wrong request, and the
    // connection's page offers only the entities it serves.
    let (status, answer) = api(
        &http,
        &s,
        &admin,
        "POST",
        "/v1/connections/mx/syncs",
        Some(json!({"entity": "purchase_order"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not serve"),
        "{answer}"
    );
    let (_, html) = page(&http, &format!("{}/connections/mx", s.base), Some(&cookie)).await;
    assert!(html.contains("<option>work_order</option>"), "{html}");
    assert!(!html.contains("<option>purchase_order</option>"), "{html}");
    // Stored sealed: neither the store nor the config holds the key.
    let (_, detail) = api(&http, &s, &admin, "GET", "/v1/connections/mx", None).await;
    assert_eq!(
        detail["config"]["credentials"]["api_key"], "stored:mx.api_key",
        "{detail}"
    );
    let store = sluice::store::Store::connect(&db).await.unwrap();
    let creds = store.credentials().await.unwrap();
    assert_eq!(creds.len(), 1);
    assert!(
        !creds[0]
            .sealed
            .windows(good.len())
            .any(|w| w == good.as_bytes())
    );
    let file = std::fs::read(dir.path().join("sluice.db")).unwrap();
    assert!(
        !file.windows(good.len()).any(|w| w == good.as_bytes()),
        "the key is in the SQLite file"
    );
    // A second connection of the same name is refused.
    let (status, html, _) = post(with(form(good, emu.base_url.clone()), &csrf)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("already exists"), "{html}");

    // A read token's session sees the form but cannot connect.
    let read_cookie = sign_in(&http, &s.base, &reader).await;
    let (_, html) = page(
        &http,
        &format!("{}/connect/maximo", s.base),
        Some(&read_cookie),
    )
    .await;
    let read_csrf = csrf_of(&html);
    let mut f = form(good, emu.base_url.clone());
    f[0].1 = "mx-read".into();
    f.push(("csrf".into(), read_csrf));
    let res = http
        .post(&url)
        .header(COOKIE, &read_cookie)
        .form_of(&f)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.text().await.unwrap().contains("scope `read`"));

    // Connect links: made by an admin, for one system and one connection.
    let (_, html) = page(&http, &format!("{}/connect", s.base), Some(&cookie)).await;
    let csrf = csrf_of(&html);
    let make_link = |id: &'static str, valid: &'static str| {
        let http = http.clone();
        let base = s.base.clone();
        let cookie = cookie.clone();
        let csrf = csrf.clone();
        async move {
            let (status, html, _) = post_form(
                &http,
                &format!("{base}/connect-links"),
                Some(&cookie),
                &[
                    ("csrf", &csrf),
                    ("definition", "maximo"),
                    ("connection_id", id),
                    ("valid_s", valid),
                ],
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{html}");
            // minijinja escapes `/` in HTML as `&#x2f;`.
            let html = html.replace("&#x2f;", "/");
            let at = html.find("id=\"link-path\"").unwrap();
            let href = html[..at].rfind("href=\"/link/").unwrap() + 6;
            html[href..].split('"').next().unwrap().to_string()
        }
    };
    let link = make_link("mx-partner", "600").await;
    let link_url = format!("{}{link}", s.base);
    let (status, html) = page(&http, &link_url, None).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains("mx-partner") && html.contains("credential.api_key"),
        "{html}"
    );
    assert!(
        !html.contains("aria-label=\"Sections\""),
        "a link shows no navigation: {html}"
    );
    assert!(
        !html.contains("name=\"connection_id\""),
        "the link fixes the connection: {html}"
    );
    let link_form = |key: &'static str| {
        vec![
            ("param.base_url".to_string(), emu.base_url.clone()),
            ("param.site".to_string(), "BEDFORD".to_string()),
            ("credential.api_key".to_string(), key.to_string()),
        ]
    };
    let res = http
        .post(&link_url)
        .form_of(&link_form("nope-nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("Wrong credentials"));
    // Whoever holds a link cannot reach this server's network: private,
    // metadata and (not allow-listed) loopback addresses are refused
    // before any request, and failed attempts do not spend the link.
    for internal in [
        "http://10.1.2.3:8080",
        "http://169.254.169.254",
        "http://[::1]:8080",
    ] {
        let mut f = link_form(good);
        f[0].1 = internal.to_string();
        let res = http.post(&link_url).form_of(&f).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let html = res.text().await.unwrap();
        assert!(
            html.contains("The address is refused"),
            "{internal}: {html}"
        );
    }
    let res = http
        .post(&link_url)
        .form_of(&link_form(good))
        .send()
        .await
        .unwrap();
    let html = res.text().await.unwrap();
    assert!(html.contains("Connected"), "{html}");
    let (status, report) = api(
        &http,
        &s,
        &admin,
        "POST",
        "/v1/connections/mx-partner/test",
        None,
    )
    .await;
    assert_eq!(
        (status, report["ok"].clone()),
        (StatusCode::OK, json!(true)),
        "{report}"
    );
    // A link's connection stays guarded: each address it resolves to is
    // checked whenever it connects (loopback is allow-listed here).
    let (_, conn) = api(&http, &s, &admin, "GET", "/v1/connections/mx-partner", None).await;
    assert_eq!(conn["config"]["guarded"], true, "{conn}");
    // Used once: refused after, on both methods.
    let (status, html) = page(&http, &link_url, None).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(html.contains("already used"), "{html}");
    let res = http
        .post(&link_url)
        .form_of(&link_form(good))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GONE);
    // Forged.
    let (status, html) = page(&http, &format!("{}/link/forged-token", s.base), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("not valid"), "{html}");
    // Expired.
    let short = make_link("mx-late", "1").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, html) = page(&http, &format!("{}{short}", s.base), None).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(html.contains("expired"), "{html}");

    // A link for a connection that exists is refused when made.
    let (status, html, _) = post_form(
        &http,
        &format!("{}/connect-links", s.base),
        Some(&cookie),
        &[
            ("csrf", &csrf),
            ("definition", "maximo"),
            ("connection_id", "mx"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("already exists"), "{html}");
    // Pages are not cached, framed or referred on.
    let res = http
        .get(format!("{}/connect", s.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert_eq!(res.headers()["referrer-policy"], "same-origin");
    assert!(
        res.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    // A sign-in from another site (a sandboxed frame sends `Origin: null`) is refused.
    for (name, value) in [
        ("origin", "null"),
        ("origin", "https://evil.example"),
        ("referer", "https://evil.example/x"),
    ] {
        let res = http
            .post(format!("{}/login", s.base))
            .header(name, value)
            .form_of(&[("token", admin.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{name}: {value}");
    }

    // Signing out ends the session: the cookie replayed is sent to sign-in.
    let (_, html) = page(&http, &format!("{}/", s.base), Some(&cookie)).await;
    let csrf = csrf_of(&html);
    let (status, _, _) = post_form(
        &http,
        &format!("{}/logout", s.base),
        Some(&cookie),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let res = http
        .get(format!("{}/runs", s.base))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[LOCATION], "/login");

    // After a restart the stored credentials open again...
    drop(s);
    let s = start(&db, connectors.to_str().unwrap(), &KEY);
    let (_, report) = api(&http, &s, &admin, "POST", "/v1/connections/mx/test", None).await;
    assert_eq!(report["ok"], true, "{report}");
    drop(s);
    // ...and under another key they do not, and the log says why.
    let s = start(&db, connectors.to_str().unwrap(), &[7u8; 32]);
    let (_, report) = api(&http, &s, &admin, "POST", "/v1/connections/mx/test", None).await;
    assert_eq!(report["ok"], false, "{report}");
    let log = s.log.lock().unwrap().clone();
    assert!(log.contains("sealed with another key"), "{log}");
}
