//! The prompts of generation runs: one static system prompt per action, and the user message
//! that carries the input inside labeled delimiters (never in the system prompt). No I/O.

use crate::domain::runs::Action;

impl Action {
    pub fn system_prompt(self) -> &'static str {
        match self {
            Action::Write => {
                "You are the writing assistant of a game studio. Write the prose the user asks for: \
                 vivid, concise, ready to use in the game. Answer with the prose only."
            }
            Action::Rewrite => {
                "You are the editor of a game studio. Rewrite the text the user gives you so it reads \
                 better, keeping its meaning, names and facts. Answer with the rewritten text only."
            }
            Action::Describe => {
                "You are the lore writer of a game studio. Describe what the user names (a place, a \
                 character, an object) in a short, evocative paragraph. Answer with the description only."
            }
        }
    }
    /// The user message: the input inside labeled delimiters, never in the system prompt.
    pub fn user_message(self, input: &str) -> String {
        let label = match self {
            Action::Write => "Writing request",
            Action::Rewrite => "Text to rewrite",
            Action::Describe => "Subject to describe",
        };
        format!("{label}:\n<<<INPUT\n{input}\nINPUT>>>")
    }
}
