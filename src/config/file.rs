//! Where a `Config` comes from: the command line (and `PARLOR_*`), layered
//! over a TOML file given with `--config`, and back out as TOML for
//! `parlor config print`.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::{Cli, Command, Config, ConfigCommand};

/// What the command line asks for, with its effective configuration.
pub enum Invocation {
    Serve(Config),
    PrintConfig(Config),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("config file {path}: {cause}")]
    Parse { path: PathBuf, cause: String },
    #[error("config file {path}: unknown key `{key}`")]
    UnknownKey { path: PathBuf, key: String },
}

impl Invocation {
    /// Parses the command line, then fills every setting that neither a
    /// flag nor an environment variable set from the `--config` file.
    pub fn parse_from<I, T>(args: I) -> Result<Invocation, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let matches = Cli::command().try_get_matches_from(&args)?;
        let settings = settings_matches(&matches);
        if let Some(path) = settings.get_one::<PathBuf>("config").cloned() {
            args.extend(file_args(&path, settings)?);
            let matches = Cli::command().try_get_matches_from(&args)?;
            return Ok(Invocation::from_matches(&matches)?);
        }
        Ok(Invocation::from_matches(&matches)?)
    }

    fn from_matches(matches: &ArgMatches) -> Result<Invocation, clap::Error> {
        let cli = Cli::from_arg_matches(matches)?;
        Ok(match cli.command {
            None => Invocation::Serve(cli.serve),
            Some(Command::Serve(c)) => Invocation::Serve(c),
            Some(Command::Config(ConfigCommand::Print(c))) => Invocation::PrintConfig(c),
        })
    }
}

/// The matches that hold the `Config` arguments (top level or subcommand).
fn settings_matches(m: &ArgMatches) -> &ArgMatches {
    match m.subcommand() {
        Some(("serve", sub)) => sub,
        Some(("config", sub)) => sub.subcommand().map_or(sub, |(_, s)| s),
        _ => m,
    }
}

/// Command-line arguments for the file's settings that flags and env left
/// at their defaults. Unknown keys are an error naming the key.
fn file_args(path: &std::path::Path, set: &ArgMatches) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            cause: e.message().to_owned(),
        })?;
    let command = Cli::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let id = key.replace('-', "_");
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_id() == id.as_str() && id != "config")
        else {
            return Err(ConfigError::UnknownKey {
                path: path.to_owned(),
                key,
            });
        };
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let from_file = matches!(
            set.value_source(&id),
            None | Some(ValueSource::DefaultValue)
        );
        if !from_file {
            continue;
        }
        let flag = format!("--{}", id.replace('_', "-"));
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            _ => Err(ConfigError::Parse {
                path: path.to_owned(),
                cause: format!("`{key}` must be a string, number or boolean"),
            }),
        };
        match &value {
            toml::Value::Boolean(b) if is_switch => {
                if *b {
                    out.push(flag.into());
                }
            }
            toml::Value::Array(items) => {
                let items: Result<Vec<String>, _> = items.iter().map(scalar).collect();
                out.push(format!("{flag}={}", items?.join(",")).into());
            }
            v => out.push(format!("{flag}={}", scalar(v)?).into()),
        }
    }
    Ok(out)
}

impl Config {
    /// The effective configuration as TOML, secrets redacted.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        let hide = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some("<redacted>".into());
            }
        };
        hide(&mut shown.jwt_secret);
        hide(&mut shown.api_key);
        for url in &mut shown.cluster {
            *url = redact_url(url);
        }
        shown.config = None;
        toml::to_string(&shown).expect("config serializes")
    }
}

/// A URL with the password of its user info (`user:password@`) replaced.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((info, host)) => {
            let user = info.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn a_url_password_is_redacted() {
        assert_eq!(
            redact_url("redis://u:secret@h:6379/0"),
            "redis://u:<redacted>@h:6379/0"
        );
        assert_eq!(redact_url("rediss://:pw@h:1"), "rediss://:<redacted>@h:1");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }
}
