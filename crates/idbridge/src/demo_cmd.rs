//! `idbridge demo`: prints what `orchestration::demo` set up.

use std::time::Instant;

use anyhow::Result;
use orchestration::demo::DemoOptions;

use crate::progress::StageProgress;

pub async fn run(options: DemoOptions, json: bool) -> Result<()> {
    let started = Instant::now();
    let mut progress = StageProgress::default();
    let demo = orchestration::demo::start(options, &mut progress, crate::tenant_cmd::shutdown_signal(), &mut |line| {
        eprintln!("{line}")
    })
    .await?;
    progress.done();
    let r = &demo.ready;
    if json {
        let users: Vec<_> = r.users.iter().map(|(u, p)| serde_json::json!({"username": u, "password": p})).collect();
        crate::out!(
            "{}",
            serde_json::json!({
                "url": r.url, "issuer": r.issuer, "client_id": r.client_id, "redirect_uri": r.redirect_uri,
                "scim": r.scim, "admin_token": r.admin_token, "users": users, "data": r.data.display().to_string(),
                "config": r.config.display().to_string(),
            })
        );
    } else {
        crate::out!();
        crate::out!("idbridge demo is ready ({:.1} s).", started.elapsed().as_secs_f64());
        crate::out!();
        crate::out!("  Open {} and sign in as a synchronised user with their on-premises password:", r.url);
        for (user, password) in &r.users {
            crate::out!("    {user}   {password}");
        }
        crate::out!();
        crate::out!("What just happened:");
        crate::out!("  - a sample directory with passwords ({{SSHA}}) is in {}", r.ldif.display());
        crate::out!(
            "  - the sync engine imported {} objects and created {} in the tenant ({} updated, {} errors; planted duplicates wait in quarantine)",
            r.report.imported,
            r.report.created,
            r.report.updated,
            r.report.error_count()
        );
        crate::out!(
            "  - password hash sync stored {} passwords; the hashes never touched the sync store",
            r.report.passwords_synced
        );
        crate::out!(
            "  - the tenant serves SCIM at {} and OpenID Connect at {}/.well-known/openid-configuration",
            r.scim,
            r.issuer
        );
        crate::out!();
        crate::out!("See what the sync did (while the demo runs; --data keeps it afterwards):");
        crate::out!("  idbridge sync status --config {}", r.config.display());
        crate::out!();
        crate::out!("Try the SCIM API:");
        crate::out!(
            "  curl -H 'Authorization: Bearer {}' '{}/Users?count=3&attributes=userName,displayName,title'",
            r.admin_token,
            r.scim
        );
        crate::out!();
        crate::out!("Press Ctrl-C to stop.");
    }
    demo.wait().await?;
    eprintln!("demo stopped");
    Ok(())
}
