//! A browser stand-in for sign-in tests: keeps cookies, does not follow
//! redirects, reads and submits the sign-in forms (hidden fields included).

use std::collections::HashMap;

use reqwest::{StatusCode, header, redirect};

use crate::TestkitError;

#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

/// One response.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
}

fn http_error(e: reqwest::Error) -> TestkitError {
    TestkitError::Other(format!("HTTP: {e}"))
}

impl Browser {
    pub fn new() -> Result<Browser, TestkitError> {
        let http = reqwest::Client::builder().redirect(redirect::Policy::none()).build().map_err(http_error)?;
        Ok(Browser { http, cookies: HashMap::new() })
    }

    /// A browser that opens a new connection for every request (behind a
    /// round-robin proxy: every request on another node).
    pub fn without_keep_alive() -> Result<Browser, TestkitError> {
        let http = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            .map_err(http_error)?;
        Ok(Browser { http, cookies: HashMap::new() })
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn keep(&mut self, resp: reqwest::Response) -> Result<Page, TestkitError> {
        for v in resp.headers().get_all(header::SET_COOKIE) {
            let Ok(text) = v.to_str() else { continue };
            let pair = text.split(';').next().unwrap_or(text);
            let Some((k, val)) = pair.split_once('=') else { continue };
            if val.is_empty() || text.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), val.to_string());
            }
        }
        let status = resp.status();
        let location = resp.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).map(str::to_string);
        Ok(Page { status, location, body: resp.text().await.map_err(http_error)? })
    }

    pub async fn get(&mut self, url: &str) -> Result<Page, TestkitError> {
        let resp = self.http.get(url).header(header::COOKIE, self.cookie_header()).send().await.map_err(http_error)?;
        self.keep(resp).await
    }

    pub async fn post(&mut self, url: &str, form: &[(String, String)]) -> Result<Page, TestkitError> {
        let resp = self
            .http
            .post(url)
            .header(header::COOKIE, self.cookie_header())
            .form(form)
            .send()
            .await
            .map_err(http_error)?;
        self.keep(resp).await
    }

    /// Submits `username` on the user-name page `page` (of the sign-in that
    /// started at `authorize_url`) and follows the tenant's redirect to the
    /// password step (post, redirect, get). Another answer (an error page, a
    /// redirect to a federated identity provider) is returned as it is.
    pub async fn enter_username(
        &mut self,
        authorize_url: &str,
        page: &Page,
        username: &str,
    ) -> Result<Page, TestkitError> {
        let action = authorize_url.split('?').next().unwrap_or(authorize_url).to_string();
        let answer = self.post(&action, &form_fields(&page.body, &[("username", username)])).await?;
        match answer.location.as_deref() {
            Some(next) if answer.status == StatusCode::SEE_OTHER && next.starts_with("/oauth2/authorize?") => {
                let origin = action.trim_end_matches("/oauth2/authorize");
                self.get(&format!("{origin}{next}")).await
            }
            _ => Ok(answer),
        }
    }

    /// Opens `authorize_url`, enters the user name, then the password.
    /// Returns the last page: a 303 back to the application on success.
    pub async fn password_sign_in(
        &mut self,
        authorize_url: &str,
        username: &str,
        password: &str,
    ) -> Result<Page, TestkitError> {
        let action = authorize_url.split('?').next().unwrap_or(authorize_url).to_string();
        let first = self.get(authorize_url).await?;
        if first.status != StatusCode::OK {
            return Ok(first);
        }
        let second = self.enter_username(authorize_url, &first, username).await?;
        if !second.body.contains("type=\"password\"") {
            return Ok(second);
        }
        self.post(&action, &form_fields(&second.body, &[("password", password)])).await
    }
}

impl Browser {
    /// Signs `username` in to Security info at `issuer` (its own sign-in
    /// flow) and returns the `/account` page — or the page where the
    /// sign-in stopped.
    pub async fn sign_in_to_account(
        &mut self,
        issuer: &str,
        username: &str,
        password: &str,
    ) -> Result<Page, TestkitError> {
        let start = self.get(&format!("{issuer}/account/sign-in")).await?;
        let Some(authorize) = start.location else { return Ok(start) };
        let signed_in = self.password_sign_in(&format!("{issuer}{authorize}"), username, password).await?;
        match signed_in.location.clone() {
            Some(callback) if callback.contains("code=") => {
                self.get(&callback).await?;
                self.get(&format!("{issuer}/account")).await
            }
            _ => Ok(signed_in),
        }
    }

    /// Submits the password form of the Security info page `page`.
    pub async fn change_password_on_account(
        &mut self,
        issuer: &str,
        page: &Page,
        current: &str,
        new: &str,
    ) -> Result<Page, TestkitError> {
        let form = form_fields(
            &page.body,
            &[("action", "change-password"), ("password", current), ("new_password", new), ("confirm", new)],
        );
        self.post(&format!("{issuer}/account"), &form).await
    }
}

/// The hidden fields of the first form on a page, with `extra` set.
pub fn form_fields(page: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let form = page.split("<form").nth(1).and_then(|f| f.split("</form>").next()).unwrap_or("");
    let mut out = Vec::new();
    for input in form.split("<input").skip(1) {
        let attr = |name: &str| {
            input
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(|v| v.replace("&amp;", "&").replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">"))
        };
        if attr("type").as_deref() == Some("hidden")
            && let (Some(n), Some(v)) = (attr("name"), attr("value"))
        {
            out.push((n, v));
        }
    }
    for (k, v) in extra {
        out.retain(|(n, _)| n != k);
        out.push((k.to_string(), v.to_string()));
    }
    out
}

/// The query parameters of a URL (percent-decoded).
pub fn query(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}
