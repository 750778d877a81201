//! The walls between rooms: no import cycle between the top-level modules of any crate of the
//! workspace, read from the sources as they stand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the crate rooted at `src` and the top-level modules it names
/// (`crate::x`, or `x` inside a `use crate::{...}` list), test modules and comments aside.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter_map(|path| {
            let name = path.file_stem()?.to_str()?.to_string();
            let is_module = path.is_dir() || path.extension().is_some_and(|ext| ext == "rs");
            (is_module && name != "lib" && name != "main").then_some(name)
        })
        .collect();
    modules
        .iter()
        .map(|module| {
            let file = src.join(format!("{module}.rs"));
            let files = if file.exists() {
                vec![file]
            } else {
                rust_files(&src.join(module))
            };
            let named = files
                .iter()
                .flat_map(|file| names(&std::fs::read_to_string(file).unwrap()))
                .filter(|name| name != module && modules.contains(name))
                .collect();
            (module.clone(), named)
        })
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// The first path segment after each `crate::`, and each entry of a `use crate::{...}` list.
fn names(source: &str) -> Vec<String> {
    let code: String = source
        .split("#[cfg(test)]")
        .next()
        .unwrap()
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let identifier = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            // Entries at the list's own depth: `a::X`, `b::{...}`, `c`.
            let mut depth = 0;
            let mut entry_start = true;
            for (offset, c) in list.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => entry_start = true,
                    c if c.is_whitespace() => {}
                    _ if entry_start && depth == 0 => {
                        names.push(identifier(&list[offset..]));
                        entry_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(identifier(rest));
        }
    }
    names
}

/// The groups of modules that import each other, directly or not (Tarjan's algorithm).
fn cycles(imports: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Search<'a> {
        imports: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        cycles: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, module: &'a str) {
            let index = self.index.len();
            self.index.insert(module, index);
            self.low.insert(module, index);
            self.stack.push(module);
            for next in &self.imports[module] {
                if !self.index.contains_key(next.as_str()) {
                    self.visit(next);
                    let low = self.low[module].min(self.low[next.as_str()]);
                    self.low.insert(module, low);
                } else if self.stack.contains(&next.as_str()) {
                    let low = self.low[module].min(self.index[next.as_str()]);
                    self.low.insert(module, low);
                }
            }
            if self.low[module] == self.index[module] {
                let mut group = Vec::new();
                while let Some(member) = self.stack.pop() {
                    group.push(member.to_string());
                    if member == module {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.cycles.push(group);
                }
            }
        }
    }
    let mut search = Search {
        imports,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        cycles: Vec::new(),
    };
    for module in imports.keys() {
        if !search.index.contains_key(module.as_str()) {
            search.visit(module);
        }
    }
    search.cycles
}

#[test]
fn no_crate_has_an_import_cycle_between_its_top_level_modules() {
    let root = licensegate_testkit::repository();
    let mut crates = vec![root.join("src")];
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        crates.push(entry.unwrap().path().join("src"));
    }
    for src in crates {
        let imports = imports(&src);
        let found = cycles(&imports);
        let named: Vec<String> = found
            .iter()
            .flatten()
            .map(|module| format!("{module} -> {:?}", imports[module]))
            .collect();
        assert!(
            found.is_empty(),
            "{}: modules importing each other: {found:?}\n{}",
            src.display(),
            named.join("\n")
        );
    }
}

/// The check finds what it is for: a cycle through three modules and a `use crate::{...}`
/// list, and nothing in comments or tests.
#[test]
fn the_cycle_check_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\npub mod c;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::Thing;\n// crate::c\n").unwrap();
    std::fs::create_dir(src.join("b")).unwrap();
    std::fs::write(
        src.join("b/mod.rs"),
        "use crate::{\n    c::{X, Y},\n    std_like,\n};\n",
    )
    .unwrap();
    std::fs::write(
        src.join("c.rs"),
        "pub fn f() { crate::a::g() }\n#[cfg(test)]\nmod tests { use crate::b; }\n",
    )
    .unwrap();
    let imports = imports(src);
    assert_eq!(imports["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(imports["b"], BTreeSet::from(["c".to_string()]));
    assert_eq!(imports["c"], BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&imports), [["a", "b", "c"]]);
    std::fs::write(src.join("c.rs"), "pub fn f() {}\n").unwrap();
    assert!(cycles(&self::imports(src)).is_empty());
}
