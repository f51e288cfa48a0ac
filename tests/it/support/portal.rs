//! The portal over plain HTTP, as a browser without script sends it: a portal link from the
//! admin API, the session cookie it sets, pages and form posts.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;

use super::TestApp;

/// A portal link for `account` from `POST /v1/portal-links`.
pub async fn portal_link(app: &TestApp, account: &str) -> String {
    let (status, body) = app
        .post("/v1/portal-links", json!({ "account_id": account }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["url"].as_str().expect("a url").to_string()
}

/// A page as the portal answered it.
pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    pub html: String,
}

impl Page {
    /// The value of the first hidden field `name` in the page.
    pub fn hidden(&self, name: &str) -> String {
        hidden_field(&self.html, name)
            .unwrap_or_else(|| panic!("no field {name:?} in {}", self.html))
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// The value of the first `<input … name="NAME" value="…">` in `html`.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Someone in a browser: cookies kept per name, redirects not followed (so a test sees them).
pub struct PortalUser {
    base: String,
    http: reqwest::Client,
    cookies: Mutex<HashMap<String, String>>,
}

impl PortalUser {
    /// Nobody signed in yet, at `app`.
    pub fn new(app: &TestApp) -> PortalUser {
        PortalUser {
            base: app.url(""),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: Mutex::new(HashMap::new()),
        }
    }

    /// Signed in to `account` through a fresh portal link.
    pub async fn signed_in(app: &TestApp, account: &str) -> PortalUser {
        let user = PortalUser::new(app);
        let opened = user.open(&portal_link(app, account).await).await;
        assert_eq!(opened.status, StatusCode::SEE_OTHER, "{}", opened.html);
        assert_eq!(opened.location.as_deref(), Some("/portal/integrations"));
        user
    }

    /// Another browser holding a copy of this one's cookies (a cookie copied off a shared
    /// computer, say).
    pub fn copy(&self) -> PortalUser {
        PortalUser {
            base: self.base.clone(),
            http: self.http.clone(),
            cookies: Mutex::new(self.cookies.lock().unwrap().clone()),
        }
    }

    /// Opens an absolute URL (a portal link).
    pub async fn open(&self, url: &str) -> Page {
        self.send(self.http.get(url)).await
    }

    pub async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Posts `fields` as a form, exactly as given (no CSRF token added).
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(request).await
    }

    /// This session's CSRF token, as its pages carry it.
    pub async fn csrf(&self) -> String {
        let page = self.get("/portal/integrations").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.html);
        page.hidden("csrf")
    }

    /// Posts `fields` with this session's CSRF token.
    pub async fn submit(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.csrf().await;
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post(path, &all).await
    }

    async fn send(&self, mut request: reqwest::RequestBuilder) -> Page {
        let cookie = {
            let jar = self.cookies.lock().unwrap();
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if !cookie.is_empty() {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.expect("portal request");
        let status = response.status();
        let headers = response.headers().clone();
        for set in headers.get_all(SET_COOKIE) {
            let set = set.to_str().expect("ASCII cookie");
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').expect("name=value");
            let mut jar = self.cookies.lock().unwrap();
            if attributes.contains("Max-Age=0") {
                jar.remove(name);
            } else {
                jar.insert(name.to_string(), value.to_string());
            }
        }
        let location = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let html = response.text().await.expect("portal body");
        Page {
            status,
            location,
            headers,
            html,
        }
    }
}
