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

/// The source without its test modules (`#[cfg(test)] mod x;` or `#[cfg(test)] mod x { ... }`,
/// wherever they stand); other `#[cfg(test)]` items stay, so their imports count.
fn without_test_modules(source: &str) -> String {
    let mut kept = String::new();
    let mut rest = source;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = &rest[at + "#[cfg(test)]".len()..];
        let item = after.trim_start();
        let item = item.strip_prefix("pub(crate) ").unwrap_or(item);
        if !item.starts_with("mod ") {
            kept.push_str(&rest[..at + "#[cfg(test)]".len()]);
            rest = after;
            continue;
        }
        kept.push_str(&rest[..at]);
        let body = &after[after.len() - item.len()..];
        let end = match (body.find(';'), body.find('{')) {
            (Some(semicolon), open) if open.is_none_or(|open| semicolon < open) => semicolon + 1,
            (_, Some(open)) => {
                let mut depth = 0;
                let mut end = body.len();
                for (offset, c) in body[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + offset + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            _ => body.len(),
        };
        rest = &body[end..];
    }
    kept.push_str(rest);
    kept
}

/// The first path segment after each `crate::`, and each entry of a `use crate::{...}` list.
fn names(source: &str) -> Vec<String> {
    let code: String = without_test_modules(source)
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
    std::fs::write(
        src.join("a.rs"),
        "#[cfg(test)]\nconst T: u8 = 0;\n#[cfg(test)]\nmod tests {\n    fn f() { let _ = \"{}\"; }\n    use crate::c;\n}\nuse crate::b::Thing;\n// crate::c\n",
    )
    .unwrap();
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

/// The paths `docs/layout.md` names in its tree, in the order it names them.
fn layout_page_paths() -> Vec<String> {
    let page =
        std::fs::read_to_string(licensegate_testkit::repository().join("docs/layout.md")).unwrap();
    let tree = page.split("```").nth(1).expect("docs/layout.md has a tree");
    // Descriptions continue on lines indented past the path column; rooms are indented by two.
    tree.lines()
        .filter(|line| line.len() - line.trim_start().len() < 4)
        .filter_map(|line| line.trim_start().split("  ").next())
        .flat_map(|first_column| first_column.split(", "))
        .map(str::trim)
        .filter(|item| item.contains('/') || item.ends_with(".rs") || item.ends_with(".toml"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_layout_page_names_every_room_and_crate_and_nothing_that_is_not_there() {
    let root = licensegate_testkit::repository();
    let named = layout_page_paths();
    for path in &named {
        assert!(
            root.join(path).exists(),
            "docs/layout.md names {path}, which does not exist"
        );
    }
    let mut present = Vec::new();
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        present.push(if path.is_dir() {
            format!("src/{name}/")
        } else {
            format!("src/{name}")
        });
    }
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let name = entry.unwrap().file_name().to_str().unwrap().to_string();
        present.push(format!("crates/{name}/"));
    }
    for path in present {
        assert!(named.contains(&path), "docs/layout.md does not name {path}");
    }
}

/// The rooms of `src/` depend only on rooms `docs/layout.md` lists before them.
#[test]
fn each_room_uses_only_the_rooms_below_it() {
    let root = licensegate_testkit::repository();
    let order: Vec<String> = layout_page_paths()
        .iter()
        .filter_map(|path| path.strip_prefix("src/"))
        .map(|room| {
            room.trim_end_matches('/')
                .trim_end_matches(".rs")
                .to_string()
        })
        .filter(|room| room != "main" && room != "lib")
        .collect();
    let imports = imports(&root.join("src"));
    for (module, uses) in &imports {
        let rank = order.iter().position(|room| room == module);
        let rank = rank.unwrap_or_else(|| panic!("docs/layout.md does not place {module}"));
        for used in uses {
            let below = order[..rank].contains(used);
            assert!(
                below,
                "{module} uses {used}, which docs/layout.md lists above it"
            );
        }
    }
}
