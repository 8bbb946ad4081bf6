//! The `keys` subcommand: an operator's client for the admin API (create, list, get, update,
//! revoke, rotate, usage) with readable output. The key itself is printed once, on create and
//! rotate.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use humantime_serde::re::humantime;
use serde::Deserialize;
use serde_json::json;

use crate::admin::{IssuedKey, TOKEN_ENV};
use crate::apikey::{KeyInfo, KeyLimit, KeyPage, KeyUsage};

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Base URL of the admin API.
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:9092"
    )]
    pub admin_url: String,
    /// File holding the admin credential; without it, TOLLGATE_ADMIN_TOKEN is used. (There is no
    /// flag for the credential itself: it would show in the process list.)
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (once).
    Create {
        #[command(flatten)]
        admin: AdminArgs,
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// Who the key acts for (becomes the identity's subject).
        #[arg(long)]
        owner: String,
        #[arg(long)]
        tenant: Option<String>,
        /// A scope; repeat or separate with commas.
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Vec<String>,
        /// Plan / tier, e.g. `gold`.
        #[arg(long)]
        plan: Option<String>,
        /// The key's own rate limit, used instead of its plan's, e.g. `100/minute` (units:
        /// second, minute, hour, day).
        #[arg(long, value_parser = KeyLimit::parse)]
        limit: Option<KeyLimit>,
        /// Lifetime from now, e.g. `90d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// Print the raw JSON response.
        #[arg(long)]
        json: bool,
    },
    /// List keys as a table.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Keys per page.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this key id (the `next` hint of a previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Follow every page.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Get {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's metadata (only the fields given).
    Update {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        /// Replace the scopes; repeat or separate with commas.
        #[arg(long = "scope", value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// Set the key's own rate limit, e.g. `100/minute`.
        #[arg(long, value_parser = KeyLimit::parse, conflicts_with = "no_limit")]
        limit: Option<KeyLimit>,
        /// Remove the key's own rate limit: its plan's applies again.
        #[arg(long)]
        no_limit: bool,
        /// New lifetime from now, e.g. `30d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Revoke a key at once.
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
    /// Give a key a new secret (same id) and print it (once).
    Rotate {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        /// How long the previous secret keeps working, e.g. `1h` (default: not at all).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        grace: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Show a key's calls per UTC day (allowed, denied, rate limited) and their totals.
    Usage {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        /// First day, YYYY-MM-DD (default: 29 days before --to).
        #[arg(long)]
        from: Option<String>,
        /// Last day, YYYY-MM-DD, included (default: today, UTC).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `keys` subcommand, printing to stdout.
pub async fn run_keys(cmd: KeysCommand) -> anyhow::Result<()> {
    let env_token = std::env::var(TOKEN_ENV).ok();
    let mut out = std::io::stdout().lock();
    let mut buf = Vec::new();
    let r = run_keys_to(cmd, env_token, &mut buf).await;
    out.write_all(&buf)?;
    r
}

/// Runs a `keys` subcommand with the credential from `env_token` (unless a token file is given),
/// writing its output to `out`.
pub async fn run_keys_to(
    cmd: KeysCommand,
    env_token: Option<String>,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let admin = match &cmd {
        KeysCommand::Create { admin, .. }
        | KeysCommand::List { admin, .. }
        | KeysCommand::Get { admin, .. }
        | KeysCommand::Update { admin, .. }
        | KeysCommand::Revoke { admin, .. }
        | KeysCommand::Rotate { admin, .. }
        | KeysCommand::Usage { admin, .. } => admin.clone(),
    };
    let client = Client::new(&admin, env_token)?;
    match cmd {
        KeysCommand::Create {
            name,
            owner,
            tenant,
            scopes,
            plan,
            limit,
            expires_in,
            json,
            ..
        } => {
            let mut body = json!({"name": name, "owner": owner, "tenant": tenant, "scopes": scopes, "plan": plan, "rate_limit": limit});
            if let Some(d) = expires_in {
                body["expires_in"] = json!(humantime::format_duration(d).to_string());
            }
            let issued: IssuedKey = client
                .send(reqwest::Method::POST, "/v1/keys", Some(body))
                .await?;
            print_issued(out, &issued, json, "Created")?;
        }
        KeysCommand::List {
            limit,
            cursor,
            all,
            json,
            ..
        } => {
            let mut cursor = cursor;
            let mut keys = Vec::new();
            let next = loop {
                let mut path = format!("/v1/keys?limit={limit}");
                if let Some(c) = &cursor {
                    path.push_str(&format!("&cursor={}", encode(c)));
                }
                let page: KeyPage = client.send(reqwest::Method::GET, &path, None).await?;
                keys.extend(page.keys);
                match page.next_cursor {
                    Some(n) if all => cursor = Some(n),
                    n => break n,
                }
            };
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&KeyPage {
                        keys,
                        next_cursor: next
                    })?
                )?;
            } else {
                write_table(out, &keys, SystemTime::now())?;
                if let Some(n) = next {
                    writeln!(out, "\nmore keys: --cursor {n} (or --all)")?;
                }
            }
        }
        KeysCommand::Get { id, json, .. } => {
            let info: KeyInfo = client
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/keys/{}", encode(&id)),
                    None,
                )
                .await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
            } else {
                write_details(out, &info, SystemTime::now())?;
            }
        }
        KeysCommand::Update {
            id,
            name,
            owner,
            tenant,
            plan,
            scopes,
            limit,
            no_limit,
            expires_in,
            ..
        } => {
            let mut body = serde_json::Map::new();
            let fields = [
                ("name", name),
                ("owner", owner),
                ("tenant", tenant),
                ("plan", plan),
            ];
            for (field, value) in fields {
                if let Some(v) = value {
                    body.insert(field.into(), json!(v));
                }
            }
            if let Some(s) = scopes {
                body.insert("scopes".into(), json!(s));
            }
            if limit.is_some() || no_limit {
                body.insert("rate_limit".into(), json!(limit));
            }
            if let Some(d) = expires_in {
                let at = humantime::format_rfc3339_seconds(SystemTime::now() + d).to_string();
                body.insert("expires_at".into(), json!(at));
            }
            if body.is_empty() {
                bail!(
                    "nothing to change: give at least one of --name, --owner, --tenant, --plan, --scope, --limit, --no-limit, --expires-in"
                );
            }
            let path = format!("/v1/keys/{}", encode(&id));
            let info: KeyInfo = client
                .send(reqwest::Method::PATCH, &path, Some(body.into()))
                .await?;
            write_details(out, &info, SystemTime::now())?;
        }
        KeysCommand::Revoke { id, .. } => {
            let info: KeyInfo = client
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/keys/{}/revoke", encode(&id)),
                    None,
                )
                .await?;
            writeln!(
                out,
                "Revoked key {} ({}); every replica refuses it within a second.",
                info.id, info.name
            )?;
        }
        KeysCommand::Rotate {
            id, grace, json, ..
        } => {
            let body = json!({"grace_period": humantime::format_duration(grace).to_string()});
            let issued: IssuedKey = client
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/keys/{}/rotate", encode(&id)),
                    Some(body),
                )
                .await?;
            print_issued(out, &issued, json, "Rotated")?;
        }
        KeysCommand::Usage {
            id, from, to, json, ..
        } => {
            let mut path = format!("/v1/keys/{}/usage", encode(&id));
            let range: Vec<String> = [("from", from), ("to", to)]
                .into_iter()
                .filter_map(|(name, v)| v.map(|v| format!("{name}={}", encode(&v))))
                .collect();
            if !range.is_empty() {
                path = format!("{path}?{}", range.join("&"));
            }
            let usage: KeyUsage = client.send(reqwest::Method::GET, &path, None).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&usage)?)?;
            } else {
                write_usage(out, &usage)?;
            }
        }
    }
    Ok(())
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
}

impl Client {
    fn new(admin: &AdminArgs, env_token: Option<String>) -> anyhow::Result<Self> {
        let token = match &admin.token_file {
            Some(f) => std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the admin token file {}", f.display()))?
                .trim_end()
                .to_string(),
            None => env_token
                .map(|t| t.trim_end().to_string())
                .unwrap_or_default(),
        };
        if token.is_empty() {
            bail!("no admin credential: pass --token-file or set {TOKEN_ENV}");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            http,
            base: admin.admin_url.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => bail!("{} ({}): {}", status.as_u16(), e.error, e.message),
                Err(_) => bail!("{status} from the admin API"),
            }
        }
        serde_json::from_slice(&bytes).context("unexpected response from the admin API")
    }
}

/// Percent-encodes anything but unreserved characters (ids are base62; this guards typos).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn print_issued(
    out: &mut Vec<u8>,
    issued: &IssuedKey,
    json: bool,
    verb: &str,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(issued)?)?;
        return Ok(());
    }
    let k = &issued.key;
    writeln!(out, "{verb} key {} ({}, owner {}).", k.id, k.name, k.owner)?;
    if let Some(t) = k.previous_secret_valid_until {
        writeln!(
            out,
            "The previous secret keeps working until {}.",
            time(Some(t))
        )?;
    }
    writeln!(out)?;
    writeln!(out, "    {}", issued.secret)?;
    writeln!(out)?;
    writeln!(out, "WARNING: {}.", issued.warning)?;
    Ok(())
}

fn time(t: Option<SystemTime>) -> String {
    t.map_or_else(
        || "-".to_string(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    )
}

fn status(k: &KeyInfo, now: SystemTime) -> &'static str {
    if k.revoked {
        "revoked"
    } else if k.expires_at.is_some_and(|t| t <= now) {
        "expired"
    } else if k.previous_secret_valid_until.is_some_and(|t| t > now) {
        "rotating"
    } else {
        "active"
    }
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// A plain aligned table: one key a line, no secrets.
fn write_table(out: &mut Vec<u8>, keys: &[KeyInfo], now: SystemTime) -> std::io::Result<()> {
    if keys.is_empty() {
        return writeln!(out, "no keys");
    }
    let header = [
        "ID",
        "NAME",
        "OWNER",
        "TENANT",
        "PLAN",
        "SCOPES",
        "STATUS",
        "EXPIRES",
        "LAST USED",
    ];
    let rows: Vec<[String; 9]> = keys
        .iter()
        .map(|k| {
            [
                k.id.clone(),
                k.name.clone(),
                k.owner.clone(),
                opt(&k.tenant),
                opt(&k.plan),
                if k.scopes.is_empty() {
                    "-".into()
                } else {
                    k.scopes.join(",")
                },
                status(k, now).into(),
                time(k.expires_at),
                time(k.last_used_at),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut Vec<u8>, cells: &[&str]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &header)?;
    for row in &rows {
        line(out, &row.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(())
}

fn write_details(out: &mut Vec<u8>, k: &KeyInfo, now: SystemTime) -> std::io::Result<()> {
    let rows = [
        ("id", k.id.clone()),
        ("name", k.name.clone()),
        ("owner", k.owner.clone()),
        ("tenant", opt(&k.tenant)),
        ("plan", opt(&k.plan)),
        (
            "rate limit",
            k.rate_limit
                .map_or_else(|| "- (the plan's)".into(), |l| l.to_string()),
        ),
        (
            "scopes",
            if k.scopes.is_empty() {
                "-".into()
            } else {
                k.scopes.join(", ")
            },
        ),
        ("status", status(k, now).into()),
        ("expires", time(k.expires_at)),
        ("created", time(Some(k.created_at))),
        ("updated", time(Some(k.updated_at))),
        ("last used", time(k.last_used_at)),
        ("revoked", time(k.revoked_at)),
        ("old secret until", time(k.previous_secret_valid_until)),
    ];
    for (name, value) in rows {
        writeln!(out, "{name:<17}{value}")?;
    }
    Ok(())
}

/// One line per day with calls, right-aligned counts, then the totals.
fn write_usage(out: &mut Vec<u8>, u: &KeyUsage) -> std::io::Result<()> {
    writeln!(
        out,
        "Usage of key {} from {} to {} (UTC days; kept {} days)",
        u.key_id, u.from, u.to, u.retention_days
    )?;
    writeln!(out)?;
    if u.days.is_empty() {
        return writeln!(out, "no calls");
    }
    let counts = |c: &crate::apikey::usage::Counts| [c.allowed, c.denied, c.rate_limited];
    let rows: Vec<(String, [u64; 3])> = u
        .days
        .iter()
        .map(|d| (d.date.to_string(), counts(&d.counts)))
        .chain([("total".to_string(), counts(&u.totals))])
        .collect();
    let header = ["ALLOWED", "DENIED", "RATE LIMITED"];
    let mut widths = header.map(str::len);
    for (_, c) in &rows {
        for (w, n) in widths.iter_mut().zip(c) {
            *w = (*w).max(n.to_string().len());
        }
    }
    let [a, d, r] = widths;
    writeln!(
        out,
        "{:<10}  {:>a$}  {:>d$}  {:>r$}",
        "DATE", header[0], header[1], header[2]
    )?;
    for (i, (day, [x, y, z])) in rows.iter().enumerate() {
        if i + 1 == rows.len() {
            writeln!(out, "{}", "-".repeat(10 + a + d + r + 6))?;
        }
        writeln!(out, "{day:<10}  {x:>a$}  {y:>d$}  {z:>r$}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tollgate_common::secret::Secret;

    use super::*;
    use crate::apikey::{
        ApiKeyError, ApiKeys, ApiKeysConfig, EmbeddedStoreConfig, KeyStoreConfig, UsageOutcome,
    };

    const TOKEN: &str = "cli-test-token-0123456789";

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: KeysCommand,
    }

    struct Server {
        url: String,
        keys: ApiKeys,
        _dir: tempfile::TempDir,
    }

    async fn server() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ApiKeysConfig {
            store: KeyStoreConfig::Embedded(EmbeddedStoreConfig {
                path: dir.path().join("keys.redb"),
            }),
            ..ApiKeysConfig::default()
        };
        let keys = ApiKeys::open(&cfg).await.unwrap();
        let router = crate::admin::router_with_token(keys.clone(), Secret::new(TOKEN)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(crate::admin::serve(
            listener,
            router,
            &crate::admin::AdminConfig::default(),
            tollgate_common::Shutdown::new(),
        ));
        Server {
            url,
            keys,
            _dir: dir,
        }
    }

    async fn run(s: &Server, args: &[&str]) -> anyhow::Result<String> {
        let mut argv = vec!["keys"];
        argv.extend_from_slice(&args[..1]);
        argv.extend(["--admin-url", s.url.as_str()]);
        argv.extend_from_slice(&args[1..]);
        let cli = Cli::try_parse_from(argv)?;
        let mut out = Vec::new();
        run_keys_to(cli.cmd, Some(TOKEN.into()), &mut out).await?;
        Ok(String::from_utf8(out)?)
    }

    fn secret_in(out: &str) -> String {
        out.split_whitespace()
            .find(|w| w.starts_with("tgk_"))
            .expect("the key is printed")
            .to_string()
    }

    #[tokio::test]
    async fn create_list_get_rotate_revoke() {
        let s = server().await;
        let out = run(
            &s,
            &[
                "create",
                "--name",
                "ci",
                "--owner",
                "team-a",
                "--scope",
                "read,write",
                "--plan",
                "gold",
            ],
        )
        .await
        .unwrap();
        let key = secret_in(&out);
        assert_eq!(out.matches(&key).count(), 1, "printed once");
        assert!(out.contains("WARNING") && out.contains("only once"));
        let id = crate::apikey::format::parse(&key).unwrap().id().to_string();
        assert_eq!(
            s.keys.verify(&key).await.unwrap().plan.as_deref(),
            Some("gold")
        );

        run(
            &s,
            &[
                "create",
                "--name",
                "other",
                "--owner",
                "team-b",
                "--expires-in",
                "30d",
            ],
        )
        .await
        .unwrap();
        let table = run(&s, &["list"]).await.unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("ID") && lines[0].contains("STATUS"),
            "{table}"
        );
        assert_eq!(lines.len(), 3, "{table}");
        let row = lines.iter().find(|l| l.starts_with(&id)).unwrap();
        assert!(
            row.contains("team-a") && row.contains("read,write") && row.contains("active"),
            "{row}"
        );
        assert!(!table.contains(&key[17..]), "no secret in the table");
        // Columns line up: the STATUS header starts where each row's status does.
        let col = lines[0].find("STATUS").unwrap();
        assert!(
            lines[1..].iter().all(|l| l[col..].starts_with("active")),
            "{table}"
        );

        let paged = run(&s, &["list", "--limit", "1"]).await.unwrap();
        assert!(paged.contains("more keys: --cursor"), "{paged}");
        assert_eq!(
            run(&s, &["list", "--limit", "1", "--all"])
                .await
                .unwrap()
                .lines()
                .count(),
            3
        );

        let details = run(&s, &["get", &id]).await.unwrap();
        assert!(
            details.contains("gold") && details.contains("team-a"),
            "{details}"
        );
        let updated = run(
            &s,
            &["update", &id, "--plan", "silver", "--expires-in", "1d"],
        )
        .await
        .unwrap();
        assert!(updated.contains("silver"), "{updated}");
        let who = s.keys.verify(&key).await.unwrap();
        assert_eq!(who.plan.as_deref(), Some("silver"));
        assert!(who.expires_at.is_some());
        assert!(
            run(&s, &["update", &id])
                .await
                .unwrap_err()
                .to_string()
                .contains("nothing to change")
        );

        let out = run(&s, &["rotate", &id, "--grace", "1h"]).await.unwrap();
        let new_key = secret_in(&out);
        assert_ne!(new_key, key);
        assert!(out.contains("previous secret keeps working until"), "{out}");
        assert!(s.keys.verify(&key).await.is_ok() && s.keys.verify(&new_key).await.is_ok());
        assert!(run(&s, &["list"]).await.unwrap().contains("rotating"));

        let out = run(&s, &["revoke", &id]).await.unwrap();
        assert!(out.contains("Revoked"), "{out}");
        assert!(matches!(
            s.keys.verify(&new_key).await,
            Err(ApiKeyError::Revoked)
        ));
        assert!(run(&s, &["list"]).await.unwrap().contains("revoked"));
    }

    #[tokio::test]
    async fn a_keys_own_limit_and_its_usage_table() {
        let s = server().await;
        let args = [
            "create", "--name", "n", "--owner", "o", "--plan", "gold", "--limit", "2/min",
        ];
        let key = secret_in(&run(&s, &args).await.unwrap());
        let who = s.keys.verify(&key).await.unwrap();
        assert_eq!(
            who.rate_limit.map(|l| l.to_string()).as_deref(),
            Some("2/minute")
        );
        let id = who.key_id.clone().unwrap();
        let details = run(&s, &["get", &id]).await.unwrap();
        assert!(details.contains("rate limit       2/minute"), "{details}");
        let cleared = run(&s, &["update", &id, "--no-limit"]).await.unwrap();
        assert!(cleared.contains("- (the plan's)"), "{cleared}");
        assert!(s.keys.verify(&key).await.unwrap().rate_limit.is_none());
        let err = run(&s, &["update", &id, "--limit", "5/month"])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown unit \"month\""), "{err}");

        let empty = run(&s, &["usage", &id]).await.unwrap();
        assert!(empty.contains("no calls"), "{empty}");
        for (outcome, n) in [(UsageOutcome::Allowed, 1234), (UsageOutcome::Denied, 5)] {
            for _ in 0..n {
                s.keys.record_usage(&who, outcome);
            }
        }
        let today = s.keys.today().to_string();
        let table = run(&s, &["usage", &id, "--to", &today]).await.unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains(&format!("to {today}")), "{table}");
        assert_eq!(
            lines[2], "DATE        ALLOWED  DENIED  RATE LIMITED",
            "{table}"
        );
        assert_eq!(
            lines[3],
            format!("{today}     1234       5             0"),
            "{table}"
        );
        assert_eq!(
            lines[5], "total          1234       5             0",
            "{table}"
        );
        let err = run(&s, &["usage", &id, "--from", "last week"])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("from must be a UTC date"), "{err}");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[tokio::test]
    async fn errors_are_readable() {
        let s = server().await;
        let missing = crate::apikey::format::generate_id();
        let err = run(&s, &["revoke", &missing])
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("404") && err.contains("no such key"), "{err}");

        let cli = Cli::try_parse_from(["keys", "list", "--admin-url", &s.url]).unwrap();
        let err = run_keys_to(cli.cmd, None, &mut Vec::new())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("TOLLGATE_ADMIN_TOKEN"), "{err}");

        let cli = Cli::try_parse_from(["keys", "list", "--admin-url", &s.url]).unwrap();
        let err = run_keys_to(
            cli.cmd,
            Some("wrong-token-0123456789".into()),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
        let cli = Cli::try_parse_from([
            "keys",
            "list",
            "--admin-url",
            &s.url,
            "--token-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        let mut out = Vec::new();
        run_keys_to(cli.cmd, None, &mut out).await.unwrap();
        assert_eq!(String::from_utf8(out).unwrap().trim(), "no keys");
    }
}
