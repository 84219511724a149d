//! Questions and answers for the wizard: asked on a terminal (line by line,
//! so it works over SSH in 80×24), or answered by flags in scripts.

use std::io::{BufRead, IsTerminal, Write};

use orchestration::init::{Answer, Ask, InitError, Result};

fn refused(text: String) -> InitError {
    InitError::Failed(orchestration::Error::Refused(text))
}

/// The terminal (or, non-interactive, the flags) as the wizard's [`Ask`].
pub struct Prompter {
    interactive: bool,
    accept_defaults: bool,
    colour: bool,
    input: Box<dyn BufRead + Send>,
}

impl Prompter {
    /// Interactive when standard input is a terminal (and `--accept-defaults`
    /// was not given); colour only on a terminal that is not "dumb" and
    /// without NO_COLOR.
    pub fn new(accept_defaults: bool) -> Prompter {
        let interactive = std::io::stdin().is_terminal() && !accept_defaults;
        let colour = std::io::stderr().is_terminal()
            && std::env::var_os("NO_COLOR").is_none()
            && std::env::var("TERM").is_ok_and(|t| t != "dumb");
        Prompter { interactive, accept_defaults, colour, input: Box::new(std::io::BufReader::new(std::io::stdin())) }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }
}

impl Ask for Prompter {
    fn interactive(&self) -> bool {
        self.interactive
    }

    /// A step's heading.
    fn heading(&self, step: usize, total: usize, title: &str) {
        eprintln!();
        eprintln!("{}", self.paint("1", &format!("[{step}/{total}] {title}")));
        if self.interactive && step > 1 {
            eprintln!("{}", self.paint("2", "(type < to go back, ? for help)"));
        }
    }

    fn say(&self, text: &str) {
        eprintln!("{text}");
    }

    fn good(&self, text: &str) {
        eprintln!("{} {text}", self.paint("32", "ok"));
    }

    fn warn(&self, text: &str) {
        eprintln!("{} {text}", self.paint("33", "warning:"));
    }

    fn bad(&self, text: &str) {
        eprintln!("{} {text}", self.paint("31", "problem:"));
    }

    /// Asks `question`. Scripted: the flag's value, else the default with
    /// `--accept-defaults`, else an error naming the flag. On a terminal the
    /// flag's value (or the default) is offered and Enter takes it.
    fn ask(
        &mut self,
        question: &str,
        flag: &str,
        given: Option<String>,
        default: Option<String>,
        help: &str,
    ) -> Result<Answer<String>> {
        let offered = given.clone().or(default);
        if !self.interactive {
            return match (given, offered) {
                (Some(v), _) => Ok(Answer::Value(v)),
                (None, Some(d)) if self.accept_defaults => Ok(Answer::Value(d)),
                _ => Err(refused(format!(
                    "{question}: give {flag} (or --accept-defaults to take the default where there is one)"
                ))),
            };
        }
        loop {
            match &offered {
                Some(d) if !d.is_empty() => eprint!("{question} [{}]: ", self.paint("36", d)),
                _ => eprint!("{question}: "),
            }
            std::io::stderr().flush().map_err(|e| InitError::Failed(e.into()))?;
            let mut line = String::new();
            if self.input.read_line(&mut line).map_err(|e| InitError::Failed(e.into()))? == 0 {
                return Err(refused(format!("standard input ended during the question {question:?}")));
            }
            let line = line.trim();
            match line {
                "<" => return Ok(Answer::Back),
                "?" => eprintln!("{help} (flag: {flag})"),
                "" => match &offered {
                    Some(d) => return Ok(Answer::Value(d.clone())),
                    None => eprintln!("an answer is needed here ({help})"),
                },
                "-" => return Ok(Answer::Value(String::new())),
                v => return Ok(Answer::Value(v.to_string())),
            }
        }
    }

    fn password(&mut self, prompt: &str) -> Result<String> {
        rpassword::prompt_password(prompt).map_err(|e| refused(format!("reading the password from the terminal: {e}")))
    }
}
