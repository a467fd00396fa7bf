//! Command lines faultline prints for people to paste (`reproduce:`, the swarm's rerun and
//! shrink commands): each word quoted so that a POSIX shell reads it back as written.

use std::borrow::Cow;

/// `word` as a shell reads it: unchanged when it holds only characters no shell treats
/// specially, else in single quotes (a single quote inside becomes `'\''`).
pub fn quote(word: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    /// What `sh -c 'printf "%s\n" WORD'` prints back is the word itself.
    #[test]
    fn a_quoted_word_reads_back_as_written() {
        for word in [
            "scenarios/quickstart.toml",
            "job.collective=\"tree\"",
            "scenario.description=it's a \"test\" $HOME `x` \\ ;|&",
            "two words",
            "",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf '%s' {}", quote(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
        assert_eq!(quote("cluster.gpus=12"), "cluster.gpus=12");
    }
}
