//! Every external program that the driver, its tests and its scripts run is
//! installed by the project's one package list, `scripts/lib/packages.tsv`,
//! for each job that runs it. The list cannot drift: this test reads the
//! sources (Rust string literals and the words shell scripts run as
//! commands) and fails, naming the command, the file and the package, when
//! a program is run that the list does not install for that job.
//!
//! A word counts as a program when the list names it, when the machine has
//! it in a system `bin` directory, or when Rust code passes it to
//! `Command::new` or one of the project's `run`-style helpers. Programs of
//! Debian's essential packages (coreutils, util-linux, bash, ...) need no
//! row: every Debian system has them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const LIST: &str = "scripts/lib/packages.tsv";
const JOBS: &[&str] = &["build", "node", "test", "demo", "vm"];
const SYSTEM_BIN: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// One row of the package list.
#[derive(Debug)]
struct Row {
    package: String,
    jobs: BTreeSet<String>,
    line: usize,
}

/// Where a program is run: the file, the line and the jobs that run it.
#[derive(Debug, Clone)]
struct Use {
    file: PathBuf,
    line: usize,
    /// A shell command word, or a Rust literal passed to `Command::new` or a
    /// run helper: surely a program. Other Rust literals count only when
    /// the list names them.
    certain: bool,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// command -> row; `-` rows (a package with no command) are keyed by package.
fn read_list(text: &str) -> Result<BTreeMap<String, Row>, String> {
    let mut rows = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            return Err(format!(
                "{LIST}:{}: want `COMMAND PACKAGE JOB...`, got {raw:?}",
                i + 1
            ));
        }
        let jobs: BTreeSet<String> = fields[2..].iter().map(|j| j.to_string()).collect();
        if let Some(bad) = jobs.iter().find(|j| !JOBS.contains(&j.as_str())) {
            return Err(format!(
                "{LIST}:{}: unknown job {bad:?}; jobs are {JOBS:?}",
                i + 1
            ));
        }
        let key = if fields[0] == "-" {
            format!("-{}", fields[1])
        } else {
            fields[0].to_string()
        };
        let row = Row {
            package: fields[1].to_string(),
            jobs,
            line: i + 1,
        };
        if rows.insert(key.clone(), row).is_some() {
            return Err(format!("{LIST}:{}: {key} is listed twice", i + 1));
        }
    }
    Ok(rows)
}

/// The jobs that run what a file runs.
fn jobs_of(file: &Path) -> &'static [&'static str] {
    let name = file.to_string_lossy();
    if name.starts_with("src/") {
        // The node image runs the driver; the tests run it too.
        &["node", "test"]
    } else if name == "scripts/demo.sh" {
        &["demo"]
    } else if name == "scripts/lib/common.sh" {
        &["demo", "test"]
    } else if name.starts_with("scripts/vm") {
        &["vm", "test"]
    } else {
        &["test"]
    }
}

fn files_under(dir: &Path, keep: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, keep, out);
        } else if keep(&path) {
            out.push(path);
        }
    }
}

fn is_program_name(word: &str) -> bool {
    let mut chars = word.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && word.len() > 1
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._+-".contains(c))
}

// ---------------------------------------------------------------- Rust --

/// Functions whose first argument is the program to run.
const RUN_CALLS: &[&str] = &[
    "Command::new(",
    "run(",
    "tool_output(",
    "tool_stdout(",
    "program_check(",
];

/// The string literals of a Rust file with their line and whether they are
/// the first argument of a call that runs a program.
fn rust_literals(text: &str) -> Vec<(String, usize, bool)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => line += 1,
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') || bytes.get(i + 1) == Some(&b'\\') => {
                // A char literal such as '"' or '\"'.
                let end = text[i + 1..].find('\'').map_or(i + 1, |e| i + 2 + e);
                i = end.max(i + 1);
                continue;
            }
            b'r' if (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
                && raw_string_start(&bytes[i + 1..]).is_some() =>
            {
                let hashes = raw_string_start(&bytes[i + 1..]).unwrap_or(0);
                let start = i + 2 + hashes;
                let end_mark = format!("\"{}", "#".repeat(hashes));
                let end = text[start..]
                    .find(&end_mark)
                    .map_or(bytes.len(), |e| start + e);
                let literal = &text[start..end];
                out.push((literal.to_string(), line, false));
                line += literal.matches('\n').count();
                i = end + end_mark.len();
                continue;
            }
            b'"' => {
                let before = text[..i].trim_end();
                let certain = !before.ends_with("clap::Command::new(")
                    && RUN_CALLS.iter().any(|call| {
                        before.ends_with(call)
                            && !before[..before.len() - call.len()]
                                .ends_with(|c: char| c.is_alphanumeric() || c == '_')
                    });
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && bytes[j] != b'"' {
                    if bytes[j] == b'\\' {
                        j += 1;
                    }
                    j += 1;
                }
                let literal = &text[start..j.min(bytes.len())];
                out.push((literal.to_string(), line, certain));
                line += literal.matches('\n').count();
                i = j + 1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// `#*"` after an `r`: the start of a raw string, with its number of hashes.
fn raw_string_start(rest: &[u8]) -> Option<usize> {
    let hashes = rest.iter().take_while(|b| **b == b'#').count();
    (rest.get(hashes) == Some(&b'"')).then_some(hashes)
}

// --------------------------------------------------------------- shell --

const SHELL_WORDS: &[&str] = &[
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "for",
    "while",
    "until",
    "do",
    "done",
    "case",
    "esac",
    "in",
    "function",
    "select",
    "time",
    "echo",
    "printf",
    "read",
    "local",
    "export",
    "set",
    "unset",
    "shift",
    "return",
    "exit",
    "cd",
    "pwd",
    "source",
    ".",
    "eval",
    "exec",
    "trap",
    "wait",
    "kill",
    "test",
    "[",
    "[[",
    "]]",
    "true",
    "false",
    "declare",
    "readonly",
    "command",
    "type",
    "getopts",
    "let",
    "mapfile",
    "readarray",
    "ulimit",
    "umask",
    "break",
    "continue",
    ":",
    "!",
    "{",
    "}",
    "builtin",
    "hash",
    "jobs",
    "disown",
    "shopt",
    "compgen",
    "pushd",
    "popd",
];

/// Words after which the next word is again a command.
const PREFIXES: &[&str] = &[
    "then", "do", "else", "elif", "if", "while", "until", "!", "exec", "time", "nohup", "{",
    "xargs", "setsid",
];

fn shell_functions(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let t = line
            .trim_start()
            .trim_start_matches("function ")
            .trim_start();
        if let Some(pos) = t.find("()") {
            let name = &t[..pos];
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || "_-".contains(c))
            {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// A piece of a shell script: a word with its line, or what ends a command.
#[derive(Debug, PartialEq)]
enum Piece {
    Word(String, usize),
    /// `;`, `|`, `&`, a newline, `(`, `$(`, a backtick.
    Break,
    /// `)`: ends a subshell, a substitution or a case pattern.
    Close,
    /// `;;`: ends a case branch.
    CaseEnd,
}

/// Reads a shell script into words and command breaks: quotes, `${...}`,
/// `$((...))`, `((...))`, array assignments, comments and here-documents
/// are words or skipped, never commands.
struct ShellReader<'a> {
    chars: std::iter::Peekable<std::str::Chars<'a>>,
    line: usize,
    word: String,
    word_line: usize,
    pieces: Vec<Piece>,
    heredocs: Vec<String>,
}

impl<'a> ShellReader<'a> {
    fn read(text: &'a str) -> Vec<Piece> {
        let mut reader = ShellReader {
            chars: text.chars().peekable(),
            line: 1,
            word: String::new(),
            word_line: 1,
            pieces: Vec::new(),
            heredocs: Vec::new(),
        };
        reader.top(false);
        reader.flush();
        reader.pieces
    }

    fn next(&mut self) -> Option<char> {
        let c = self.chars.next();
        if c == Some('\n') {
            self.line += 1;
        }
        c
    }

    fn push(&mut self, c: char) {
        if self.word.is_empty() {
            self.word_line = self.line;
        }
        self.word.push(c);
    }

    fn flush(&mut self) {
        if !self.word.is_empty() {
            let word = std::mem::take(&mut self.word);
            self.pieces.push(Piece::Word(word, self.word_line));
        }
    }

    fn brk(&mut self, piece: Piece) {
        self.flush();
        self.pieces.push(piece);
    }

    /// Copies up to the `close` that balances `open` into the word.
    fn balanced(&mut self, open: char, close: char) {
        let mut depth = 1;
        while let Some(c) = self.next() {
            self.push(c);
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
        }
    }

    /// After a newline: skips the bodies of the here-documents begun on it.
    fn skip_heredocs(&mut self) {
        for end in std::mem::take(&mut self.heredocs) {
            let mut line = String::new();
            while let Some(c) = self.next() {
                if c == '\n' {
                    if line.trim() == end {
                        break;
                    }
                    line.clear();
                } else {
                    line.push(c);
                }
            }
        }
    }

    /// `$` was read: a substitution, a parameter, or arithmetic.
    fn dollar(&mut self) {
        match self.chars.peek() {
            Some('(') => {
                self.next();
                if self.chars.peek() == Some(&'(') {
                    self.push('$');
                    self.push('(');
                    self.balanced('(', ')');
                } else {
                    self.brk(Piece::Break);
                    self.top(true);
                    self.brk(Piece::Break);
                }
            }
            Some('{') => {
                self.next();
                self.push('$');
                self.push('{');
                self.balanced('{', '}');
            }
            _ => self.push('$'),
        }
    }

    fn double_quoted(&mut self) {
        self.push('"');
        while let Some(c) = self.next() {
            match c {
                '"' => {
                    self.push(c);
                    return;
                }
                '\\' => {
                    self.push(c);
                    if let Some(n) = self.next() {
                        self.push(n);
                    }
                }
                '$' => {
                    // A substitution inside quotes runs a command too; the
                    // quoted text around it stays one word.
                    let saved = std::mem::take(&mut self.word);
                    let line = self.word_line;
                    self.dollar();
                    self.flush_if_break(saved, line);
                }
                _ => self.push(c),
            }
        }
    }

    fn flush_if_break(&mut self, saved: String, line: usize) {
        let inner = std::mem::replace(&mut self.word, saved);
        if self.word.is_empty() {
            self.word_line = line;
        }
        self.word.push_str(&inner);
    }

    /// Reads commands until the end, or until the `)` of a `$(`.
    fn top(&mut self, in_substitution: bool) {
        while let Some(c) = self.next() {
            match c {
                ' ' | '\t' => self.flush(),
                '\n' => {
                    self.brk(Piece::Break);
                    self.skip_heredocs();
                }
                '\\' => match self.next() {
                    Some('\n') => self.flush(),
                    Some(n) => {
                        self.push('\\');
                        self.push(n);
                    }
                    None => {}
                },
                '#' if self.word.is_empty() => {
                    while self.chars.peek().is_some_and(|c| *c != '\n') {
                        self.next();
                    }
                }
                '\'' => {
                    self.push(c);
                    while let Some(n) = self.next() {
                        self.push(n);
                        if n == '\'' {
                            break;
                        }
                    }
                }
                '"' => self.double_quoted(),
                '$' => self.dollar(),
                ';' if self.chars.peek() == Some(&';') => {
                    self.next();
                    self.brk(Piece::CaseEnd);
                }
                ';' | '|' | '&' | '`' => self.brk(Piece::Break),
                '(' if self.word.ends_with('=') => {
                    self.push(c);
                    self.balanced('(', ')');
                }
                '(' if self.chars.peek() == Some(&'(') && self.word.is_empty() => {
                    self.push(c);
                    self.balanced('(', ')');
                }
                '(' => self.brk(Piece::Break),
                ')' if in_substitution => return,
                ')' => self.brk(Piece::Close),
                '<' if self.chars.peek() == Some(&'<') => {
                    self.next();
                    self.flush();
                    if self.chars.peek() == Some(&'<') {
                        self.next();
                        continue; // a here-string
                    }
                    while self.chars.peek().is_some_and(|c| "-~ ".contains(*c)) {
                        self.next();
                    }
                    let mut end = String::new();
                    while let Some(&n) = self.chars.peek() {
                        if n.is_alphanumeric() || n == '_' {
                            end.push(n);
                        } else if n != '\'' && n != '"' {
                            break;
                        }
                        self.next();
                    }
                    if !end.is_empty() {
                        self.heredocs.push(end);
                    }
                }
                _ => self.push(c),
            }
        }
    }
}

/// The words a shell script runs as commands, with their line numbers.
fn shell_commands(text: &str, functions: &BTreeSet<String>) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut at_command = true;
    let mut case_patterns = false;
    let mut after_case = 0u8;
    for piece in ShellReader::read(text) {
        let (word, line) = match piece {
            Piece::Break => {
                at_command = !case_patterns;
                continue;
            }
            Piece::Close => {
                at_command = true;
                case_patterns = false;
                continue;
            }
            Piece::CaseEnd => {
                case_patterns = true;
                continue;
            }
            Piece::Word(word, line) => (word, line),
        };
        // `case WORD in`: the patterns follow up to `)`.
        match (after_case, word.as_str()) {
            (_, "case") if at_command => after_case = 1,
            (1, _) => after_case = 2,
            (2, "in") => {
                after_case = 0;
                case_patterns = true;
                continue;
            }
            _ => {}
        }
        if case_patterns {
            if word == "esac" {
                case_patterns = false;
                at_command = false;
            }
            continue;
        }
        if !at_command || PREFIXES.contains(&word.as_str()) {
            continue;
        }
        if word.contains('=') && !word.starts_with('=') {
            continue; // VAR=value before a command
        }
        at_command = false;
        let name = match word.strip_prefix('/') {
            Some(_) if SYSTEM_BIN.iter().any(|d| word.starts_with(d)) => {
                word.rsplit('/').next().unwrap_or(&word).to_string()
            }
            _ => word,
        };
        if SHELL_WORDS.contains(&name.as_str())
            || functions.contains(&name)
            || !is_program_name(&name)
        {
            continue;
        }
        out.push((name, line));
    }
    out
}

// -------------------------------------------------------------- system --

fn system_path(command: &str) -> Option<PathBuf> {
    SYSTEM_BIN
        .iter()
        .map(|d| Path::new(d).join(command))
        .find(|p| p.is_file())
}

/// Whether `$PATH` has the command outside the system directories.
fn found_elsewhere_on_path(command: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .filter(|d| !SYSTEM_BIN.iter().any(|s| Path::new(s) == d))
            .any(|d| d.join(command).is_file())
    })
}

/// Whether `package` is `owner` or depends on it directly (`python3`
/// brings `/usr/bin/python3` through `python3-minimal`).
fn brings(package: &str, owner: &str) -> bool {
    package == owner
        || Command::new("dpkg-query")
            .args(["-W", "-f=${Depends}, ${Pre-Depends}", package])
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split([',', '|'])
                    .any(|dep| dep.split_whitespace().next() == Some(owner))
            })
}

/// The Debian package that owns a command in the system directories, and
/// whether it is essential. With merged /usr, dpkg knows a file by the
/// directory its package installed it in, so every one is asked.
fn owner(command: &str) -> Option<(String, bool)> {
    let candidates: Vec<PathBuf> = SYSTEM_BIN
        .iter()
        .map(|d| Path::new(d).join(command))
        .filter(|p| p.exists())
        .collect();
    let out = Command::new("dpkg-query")
        .arg("-S")
        .args(&candidates)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let package = text
        .lines()
        .find(|l| !l.starts_with("diversion by"))?
        .split([':', ','])
        .next()?
        .trim()
        .to_string();
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Essential}", &package])
        .output()
        .ok()?;
    let essential = String::from_utf8_lossy(&status.stdout).trim() == "yes";
    Some((package, essential))
}

fn collect_uses() -> BTreeMap<String, Vec<Use>> {
    let root = root();
    let mut uses: BTreeMap<String, Vec<Use>> = BTreeMap::new();
    let mut rust = Vec::new();
    for dir in ["src", "tests", "benches", "build.rs"] {
        let path = root.join(dir);
        if path.is_file() {
            rust.push(path);
        } else {
            files_under(
                &path,
                &|p| p.extension().is_some_and(|e| e == "rs"),
                &mut rust,
            );
        }
    }
    // This file names programs only to test the scanner.
    rust.retain(|p| !p.ends_with("tests/external_commands.rs"));
    for file in rust {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let rel = file.strip_prefix(&root).unwrap_or(&file).to_path_buf();
        for (literal, line, certain) in rust_literals(&text) {
            if is_program_name(&literal) {
                uses.entry(literal).or_default().push(Use {
                    file: rel.clone(),
                    line,
                    certain,
                });
            }
        }
    }
    let mut scripts = Vec::new();
    files_under(
        &root.join("scripts"),
        &|p| {
            std::fs::read_to_string(p)
                .map(|t| t.starts_with("#!") && t.lines().next().is_some_and(|l| l.contains("sh")))
                .unwrap_or(false)
                || p.extension().is_some_and(|e| e == "sh")
        },
        &mut scripts,
    );
    scripts.push(root.join(".ci/run"));
    let texts: Vec<(PathBuf, String)> = scripts
        .iter()
        .map(|p| (p.clone(), std::fs::read_to_string(p).unwrap_or_default()))
        .collect();
    let functions: BTreeSet<String> = texts.iter().flat_map(|(_, t)| shell_functions(t)).collect();
    for (file, text) in &texts {
        let rel = file.strip_prefix(&root).unwrap_or(file).to_path_buf();
        for (word, line) in shell_commands(text, &functions) {
            uses.entry(word).or_default().push(Use {
                file: rel.clone(),
                line,
                certain: true,
            });
        }
    }
    uses
}

#[test]
fn every_program_run_is_installed_by_the_package_list_for_its_job() {
    let text = std::fs::read_to_string(root().join(LIST)).expect("read the package list");
    let rows = read_list(&text).unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    for (command, places) in collect_uses() {
        let on_machine = system_path(&command);
        let row = rows.get(&command);
        let surely_run = places.iter().any(|u| u.certain);
        if row.is_none() && !surely_run {
            continue; // a string that may name no program
        }
        if row.is_none() && on_machine.is_none() && found_elsewhere_on_path(&command) {
            continue; // not from a Debian package (rustup's cargo, pyenv's python3)
        }
        let owner = on_machine.as_ref().and_then(|_| owner(&command));
        if row.is_none() && owner.as_ref().is_some_and(|(_, essential)| *essential) {
            continue;
        }
        if row.is_none() && on_machine.is_some() && owner.is_none() {
            continue; // not from a Debian package (rustup's cargo, pyenv's python3)
        }
        let first = &places[0];
        let package = row
            .map(|r| r.package.clone())
            .or_else(|| owner.as_ref().map(|(p, _)| p.clone()))
            .unwrap_or_else(|| "its Debian package".into());
        let Some(row) = row else {
            problems.push(format!(
                "`{command}` is run by {}:{} but {LIST} has no row for it; add `{command} {package} {}`",
                first.file.display(),
                first.line,
                jobs_of(&first.file).join(" ")
            ));
            continue;
        };
        let needed: BTreeSet<&str> = places
            .iter()
            .flat_map(|u| jobs_of(&u.file))
            .copied()
            .collect();
        for job in needed {
            if !row.jobs.contains(job) {
                let place = places
                    .iter()
                    .find(|u| jobs_of(&u.file).contains(&job))
                    .unwrap_or(first);
                problems.push(format!(
                    "`{command}` (package {package}) is run by {}:{} in the `{job}` job, but {LIST}:{} does not install it for `{job}`",
                    place.file.display(),
                    place.line,
                    row.line
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "programs the package list does not install:\n  {}",
        problems.join("\n  ")
    );
}

/// The list is true: after `scripts/test.sh` installed the `test` job's
/// packages, each of their commands is on the machine and comes from the
/// package the list names.
#[test]
fn the_test_jobs_commands_are_installed_from_the_packages_listed() {
    let text = std::fs::read_to_string(root().join(LIST)).expect("read the package list");
    let rows = read_list(&text).unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    for (command, row) in &rows {
        if !row.jobs.contains("test") {
            continue;
        }
        if command.starts_with('-') {
            let installed = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", &row.package])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"));
            if !installed {
                problems.push(format!("package {} is not installed", row.package));
            }
            continue;
        }
        match system_path(command).map(|p| (p, owner(command))) {
            None => problems.push(format!(
                "`{command}` is not installed: apt-get install {} (scripts/test.sh does)",
                row.package
            )),
            Some((path, Some((package, _)))) if !brings(&row.package, &package) => {
                problems.push(format!(
                    "{LIST}:{}: `{command}` ({}) comes from package {package}, not {}",
                    row.line,
                    path.display(),
                    row.package
                ))
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scanner_finds_commands_in_shell_and_rust() {
    let script = "#!/bin/bash\nhelper() { :; }\nif ! sfdisk x; then helper; fi\nout=$(jq -r . f | sort)\n\
                  case $x in\n  xfs | ext4) mkfs.xfs y ;;\nesac\ncat <<EOF\nnotacommand here\nEOF\n\
                  sudo_like=1 promtool check \\\n  continued words\n";
    let functions = shell_functions(script);
    let found: Vec<String> = shell_commands(script, &functions)
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    assert_eq!(
        found,
        ["sfdisk", "jq", "sort", "mkfs.xfs", "cat", "promtool"]
    );

    let rust = "let a = Command::new(\"losetup\");\nlet b = \"text\"; // \"comment\"\nrun(\"mkfs.ext4\", x)";
    let literals = rust_literals(rust);
    assert_eq!(
        literals,
        [
            ("losetup".to_string(), 1, true),
            ("text".to_string(), 2, false),
            ("mkfs.ext4".to_string(), 3, true)
        ]
    );

    let rows = read_list("sfdisk fdisk test\n- libcryptsetup12 node test\n").unwrap();
    assert_eq!(rows["sfdisk"].package, "fdisk");
    assert!(read_list("sfdisk fdisk nightly\n").is_err());
}
