# frozen_string_literal: true

require_relative "lib/mega_mutex/version"

Gem::Specification.new do |spec|
  spec.name = "mega_mutex"
  spec.version = MegaMutex::VERSION
  spec.authors = ["MegaMutex contributors"]
  spec.summary = "A distributed mutex for Ruby, kept in memcached: one process at a time, on any number of machines."
  spec.description = <<~DESC
    include MegaMutex, then with_distributed_mutex("id") { ... }: only one process anywhere runs the
    block at a time. Leases in memcached taken and released atomically by a C extension over
    libmemcached; reentrant, thread- and fork-safe, interrupt-safe. Drop-in for the original mega_mutex.
  DESC
  spec.license = "MIT"
  spec.required_ruby_version = ">= 3.0"
  spec.homepage = "https://github.com/megamutex/mega_mutex"
  spec.metadata = {
    "homepage_uri" => spec.homepage,
    "source_code_uri" => spec.homepage,
    "changelog_uri" => "#{spec.homepage}/blob/main/CHANGELOG.md",
    "bug_tracker_uri" => "#{spec.homepage}/issues",
    "documentation_uri" => "#{spec.homepage}/blob/main/README.md",
    "rubygems_mfa_required" => "true"
  }

  # Tracked files only (commit new files before `gem build`); a copy without
  # git (an unpacked .gem) falls back to the directory listing. docs/ holds
  # the pages the README links to.
  spec.files = Dir.chdir(__dir__) do
    tracked = `git ls-files -z 2>/dev/null`.split("\x0")
    tracked = Dir["{lib,ext,exe,sig}/**/*", "docs/*.md", "README.md", "CHANGELOG.md", "LICENSE*", ".yardopts"] if tracked.empty?
    tracked.select { |f| f.match?(%r{\A(?:lib|ext|exe|sig)/|\Adocs/[^/]+\.md\z|\A(?:README|CHANGELOG|LICENSE)|\A\.yardopts\z}) && File.file?(f) }
           .reject { |f| f.end_with?(".so", ".bundle", ".o") }
  end
  spec.bindir = "exe"
  spec.executables = ["mega_mutex"]
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/mega_mutex/extconf.rb"]
end
