# frozen_string_literal: true

require "fileutils"
require "rubygems/package"
require "tmpdir"

# The gem as users get it: built from the gemspec, installed into an empty
# GEM_HOME with a clean environment (no Bundler, no RUBYOPT/RUBYLIB), its
# extension compiled by `gem install`, and loaded by a plain `ruby` from
# there. Plus the docs and signatures: `rbs validate` and `yard stats`.
#
# The gemspec takes its files from `git ls-files`: a file not yet committed
# is not in the gem, and the first example says which.
RSpec.describe "packaging" do
  root = SpecHelpers::ROOT

  # The environment of a process that must not see Bundler or this checkout.
  def self.clean_env(gem_home)
    keep = ENV.to_h.reject do |name, _|
      name.start_with?("BUNDLE_", "BUNDLER_", "GEM_", "RUBYGEMS_") || %w[RUBYOPT RUBYLIB MEMCACHE_SERVERS].include?(name)
    end
    keep.merge("GEM_HOME" => gem_home, "GEM_PATH" => gem_home)
  end

  def self.gem_command
    path = File.join(RbConfig::CONFIG["bindir"], "gem")
    File.exist?(path) ? [RbConfig.ruby, path] : ["gem"]
  end

  def self.run!(env, *cmd, chdir:)
    out, err, status = Open3.capture3(env, *cmd, chdir: chdir, unsetenv_others: true)
    raise "#{cmd.join(' ')} failed (#{status}):\n#{out}\n#{err}" unless status.success?

    [out, err]
  end

  # Build and install once for the whole group: [tmpdir, gem file, gem home, install output].
  before(:all) do
    @tmp = Dir.mktmpdir("mega_mutex-packaging")
    @gem_home = File.join(@tmp, "gem_home")
    Dir.mkdir(@gem_home)
    env = self.class.clean_env(@gem_home)
    @gem_file = File.join(@tmp, "mega_mutex-#{MegaMutex::VERSION}.gem")
    @build_out, @build_err = self.class.run!(env, *self.class.gem_command, "build", "mega_mutex.gemspec", "--output", @gem_file,
                                             chdir: root)
    @packaged = Gem::Package.new(@gem_file).spec.files
    @installed_out, = self.class.run!(env, *self.class.gem_command, "install", "--local", "--no-document", @gem_file, chdir: @tmp)
    @env = env
  end

  after(:all) { FileUtils.rm_rf(@tmp) if @tmp }

  # Runs Ruby code in a fresh process that sees only the installed gem.
  def installed_ruby(code, env: {})
    Open3.capture3(@env.merge(env), RbConfig.ruby, "-e", code, chdir: @tmp, unsetenv_others: true)
  end

  # Files of the checkout the gem should ship, but git does not track yet.
  def untracked
    out, _, status = Open3.capture3("git", "ls-files", "--others", "--exclude-standard", "--", "lib", "ext", "exe", "sig", "docs",
                                    "CHANGELOG.md", ".yardopts", chdir: SpecHelpers::ROOT)
    status.success? ? out.split("\n").reject { |f| f.end_with?(".so", ".o") } : []
  end

  it "builds without a warning, with homepage, source and changelog links" do
    expect("#{@build_out}#{@build_err}").not_to match(/warn/i)
    spec = Gem::Package.new(@gem_file).spec
    expect(spec.homepage).to start_with("https://")
    expect(spec.metadata).to include("source_code_uri", "changelog_uri")
    expect(spec.metadata["changelog_uri"]).to end_with("CHANGELOG.md")
  end

  it "is ignored by git once built (*.gem)" do
    _, _, status = Open3.capture3("git", "check-ignore", "-q", "mega_mutex-#{MegaMutex::VERSION}.gem", chdir: root)
    expect(status).to be_success
  end

  it "ships lib/, ext/, exe/, sig/, docs/, README, CHANGELOG, LICENSE and .yardopts, and no build products" do
    wanted = Dir.chdir(root) do
      Dir["{lib,ext,exe,sig}/**/*", "docs/*.md", "README.md", "CHANGELOG.md", "LICENSE", ".yardopts"]
        .select { |f| File.file?(f) }.reject { |f| f.end_with?(".so", ".o", ".bundle") || f.include?("/Makefile") }
    end
    missing = wanted - @packaged
    expect(missing).to be_empty, lambda {
      "not in the built gem: #{missing.join(', ')}\n" \
        "(mega_mutex.gemspec takes git ls-files; untracked now: #{untracked.join(', ')}; commit them before `gem build`)"
    }
    expect(@packaged.grep(/\.(so|o|bundle)\z/)).to be_empty
    expect(@packaged).to include("exe/mega_mutex", "ext/mega_mutex/extconf.rb", "lib/mega_mutex.rb")
  end

  it "installs into an empty GEM_HOME, compiling the extension" do
    expect(@installed_out).to include("Successfully installed mega_mutex-#{MegaMutex::VERSION}")
    gem_dir = File.join(@gem_home, "gems", "mega_mutex-#{MegaMutex::VERSION}")
    expect(Dir[File.join(gem_dir, "lib", "mega_mutex", "mega_mutex.{so,bundle}")]).not_to be_empty
    expect(Dir.children(File.join(@gem_home, "gems"))).to eq(["mega_mutex-#{MegaMutex::VERSION}"]) # no runtime dependencies
  end

  it "loads with a plain `require` from the installed gem, extension included, not from the checkout" do
    out, err, status = installed_ruby(<<~'RUBY')
      require "mega_mutex"
      puts MegaMutex::VERSION
      puts $LOADED_FEATURES.grep(%r{/mega_mutex/mega_mutex\.(so|bundle)\z})
      puts MegaMutex.method(:configure).source_location.first
      puts defined?(Bundler) ? "bundler" : "no bundler"
    RUBY
    expect(status).to be_success, err
    version, so, source, bundler = out.split("\n")
    expect(version).to eq(MegaMutex::VERSION)
    expect(so).to start_with(@gem_home)
    expect(source).to start_with(File.join(@gem_home, "gems"))
    expect(bundler).to eq("no bundler")
  end

  it "locks against memcached with the installed extension" do
    out, err, status = installed_ruby(<<~'RUBY', env: { "MEMCACHE_SERVERS" => memcached.address, "MM_NS" => @namespace })
      require "mega_mutex"
      MegaMutex.configure { |c| c.namespace = ENV["MM_NS"] }
      inside = MegaMutex.with_distributed_mutex("packaged") { MegaMutex.get_current_lock("packaged") }
      puts inside.nil? ? "not held" : "held"
      puts MegaMutex.get_current_lock("packaged").inspect
    RUBY
    expect(status).to be_success, err
    expect(out).to eq("held\nnil\n")
  end

  it "runs the memory backend from the installed gem" do
    out, err, status = installed_ruby(<<~'RUBY', env: { "MEMCACHE_SERVERS" => "127.0.0.1:1" })
      require "mega_mutex"
      MegaMutex.configure { |c| c.backend = :memory }
      puts MegaMutex.with_distributed_mutex("packaged") { MegaMutex::MemoryStore.locks.size }
    RUBY
    expect(status).to be_success, -> { "#{err}\n(untracked, so not in the gem: #{untracked.join(', ')})" }
    expect(out).to eq("1\n")
  end

  it "installs a working `mega_mutex` executable" do
    pending "exe/mega_mutex is not written yet" unless File.exist?(File.join(root, "exe", "mega_mutex"))
    exe = File.join(@gem_home, "bin", "mega_mutex")
    expect(File.executable?(exe)).to be(true), "no #{exe}; gem files: #{@packaged.grep(/exe/).inspect}"
    out, err, status = Open3.capture3(@env, exe, "--version", chdir: @tmp, unsetenv_others: true)
    expect(status).to be_success, -> { "#{err}\n(untracked, so not in the gem: #{untracked.join(', ')})" }
    expect(out).to include(MegaMutex::VERSION)
  end
end

RSpec.describe "docs and signatures" do
  root = SpecHelpers::ROOT

  def tool(name, *args)
    Open3.capture3(RbConfig.ruby, Gem.bin_path(name, name), *args, chdir: SpecHelpers::ROOT)
  end

  it "`rbs -I sig validate` passes" do
    out, err, status = tool("rbs", "-I", "sig", "validate")
    expect(status).to be_success, "#{out}\n#{err}"
    expect(err).not_to match(/error/i)
  end

  it "the signatures name every public constant of the loaded gem" do
    sig = File.read(File.join(root, "sig", "mega_mutex.rbs"))
    names = MegaMutex.constants.reject { |c| %i[Native Railtie].include?(c) }
    expect(names.reject { |c| sig.match?(/\b(?:class|module) #{c}\b|\b#{c}:/) }).to be_empty
    expect(MegaMutex::MemoryStore.singleton_methods(false).reject { |m| sig.include?("def self.#{m}:") }).to be_empty
    expect(MegaMutex::Configuration.public_instance_methods(false).reject { |m| sig.match?(/def #{Regexp.escape(m.to_s)}:|attr_reader #{m}:/) })
      .to be_empty
  end

  it "`yard stats` reports everything public documented, without warnings" do
    out, err, status = tool("yard", "stats", "--list-undoc", "--no-save")
    expect(status).to be_success, err
    expect("#{out}#{err}").not_to match(/\[(warn|error)\]/)
    expect(out).to include("100.00% documented"), out
  end
end
