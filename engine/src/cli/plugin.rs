//! `sluice plugin push|list|show|remove`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{CliError, DbArgs, EXIT_OK, format_ms, print_json};
use crate::plugins::{PluginRegistry, RegistryError};
use crate::store::Store;

#[derive(Subcommand, Debug)]
pub(super) enum PluginCommand {
    /// Upload a plugin component (.wasm) as NAME@VERSION.
    Push {
        /// The component file (built for wasm32-wasip2).
        file: PathBuf,
        /// Plugin name.
        #[arg(long)]
        name: String,
        /// Semver version; versions are immutable.
        #[arg(long)]
        version: String,
        /// What it does.
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List plugins and their versions.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show one plugin's versions (NAME) or one version (NAME@VERSION).
    Show {
        /// NAME or NAME@VERSION.
        plugin: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove NAME@VERSION.
    Remove {
        /// NAME@VERSION.
        plugin: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

impl From<RegistryError> for CliError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Store(s) => CliError::from(s),
            RegistryError::Host(h) => CliError::failed(h),
            other => CliError::invalid(other.to_string()),
        }
    }
}

/// Where compiled plugins are cached (`SLUICE_PLUGIN_CACHE`, default `.sluice-cache/plugins`).
pub(super) fn cache_dir() -> PathBuf {
    std::env::var_os("SLUICE_PLUGIN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".sluice-cache/plugins"))
}

pub(super) async fn dispatch(cmd: PluginCommand) -> Result<i32, CliError> {
    match cmd {
        PluginCommand::Push {
            file,
            name,
            version,
            description,
            db,
        } => {
            let bytes = std::fs::read(&file)
                .map_err(|e| CliError::invalid(format!("cannot read {}: {e}", file.display())))?;
            let registry = PluginRegistry::new(Store::connect(&db.db).await?, Some(cache_dir()));
            let rec = registry
                .push(&name, &version, &bytes, description.as_deref())
                .await?;
            outln!(
                "{}@{} sha256:{} ({} bytes)",
                rec.name,
                rec.version,
                rec.sha256,
                rec.size
            );
            Ok(EXIT_OK)
        }
        PluginCommand::List { json, db } => {
            let registry = PluginRegistry::new(Store::connect(&db.db).await?, None);
            let list = registry.list(None).await?;
            if json {
                print_json(&list);
            } else {
                outln!(
                    "{:<24}  {:<10}  {:<16}  {:>9}  CREATED",
                    "PLUGIN",
                    "VERSION",
                    "SHA256",
                    "BYTES"
                );
                for p in list {
                    outln!(
                        "{:<24}  {:<10}  {:<16}  {:>9}  {}",
                        p.name,
                        p.version,
                        &p.sha256[..16],
                        p.size,
                        format_ms(p.created_at)
                    );
                }
            }
            Ok(EXIT_OK)
        }
        PluginCommand::Show { plugin, db } => {
            let registry = PluginRegistry::new(Store::connect(&db.db).await?, None);
            let (name, version) = match plugin.split_once('@') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (plugin.clone(), None),
            };
            let list: Vec<_> = registry
                .list(Some(&name))
                .await?
                .into_iter()
                .filter(|p| version.as_ref().is_none_or(|v| &p.version == v))
                .collect();
            if list.is_empty() {
                return Err(CliError::invalid(format!("no plugin {plugin}")));
            }
            print_json(&list);
            Ok(EXIT_OK)
        }
        PluginCommand::Remove { plugin, db } => {
            let (name, version) = plugin
                .split_once('@')
                .ok_or_else(|| CliError::invalid(format!("`{plugin}` is not NAME@VERSION")))?;
            let registry = PluginRegistry::new(Store::connect(&db.db).await?, None);
            registry.remove(name, version).await?;
            eprintln!("removed {plugin}");
            Ok(EXIT_OK)
        }
    }
}
