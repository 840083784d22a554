# frozen_string_literal: true

require "spec_helper"
require_relative "support/rails_server"

# Boots the real Rails application in spec/fixtures/rails_app with puma, on a
# free loopback port, pointed at the suite's memcached, and takes locks
# through HTTP requests (spec/support/rails_server.rb starts and stops it).
RSpec.describe "Rails integration (MegaMutex::Railtie)" do
  include RailsServer::Helpers

  # Boots the app without a server (ruby -e 'require config/environment');
  # returns [stdout, stderr, status].
  def boot(env, script = "")
    full = { "MM_SERVERS" => memcached.address, "RAILS_ENV" => "production" }.merge(env)
    Open3.capture3(full, RbConfig.ruby, "-e", "require './config/environment'; #{script}", chdir: app_root)
  end

  # Runs the app while the examples of a group run, under a namespace of its own.
  def self.serve_with_memcached(env_proc)
    before(:all) { @app_namespace = "rails#{SecureRandom.hex(4)}" }
    serve(env_proc)

    # Look at memcached with the app's namespace.
    before { MegaMutex.configure { |c| c.namespace = @app_namespace } }
  end

  describe "configured with config.mega_mutex in config/application.rb" do
    serve_with_memcached(-> { { "MM_CONFIG" => "1", "MM_SERVERS" => memcached.address, "MM_NAMESPACE" => @app_namespace } })

    it "applies every config.mega_mutex setting through MegaMutex.configure, with Rails.logger as the logger" do
      code, settings = server.get_json("/config")
      expect(code).to eq("200")
      expect(settings).to include("memcache_servers" => [memcached.address], "namespace" => @app_namespace,
                                  "lock_ttl" => 7, "backoff_max" => 0.02,
                                  "logger_is_rails_logger" => true)
    end

    it "takes a real lock in memcached, under the configured namespace, while a request holds it" do
      request = Thread.new { server.get_json("/hold?id=report") }
      token = wait_for(within: 10, message: "the request to take the lock") { MegaMutex.get_current_lock("report") }
      expect(token).to match(/:#{server.pid}:/) # the puma process holds it
      expect(memcached.get("#{@app_namespace}:report")).to eq(token)

      # A third party cannot take it while the request holds it.
      expect(MegaMutex::Lock.new("report").try_lock).to be(false)
      code, conflict = server.get_json("/hold?id=report&timeout=0")
      expect(code).to eq("409")
      expect(conflict).to include("error" => "MegaMutex::TimeoutError", "holder" => token)

      server.get("/finish?id=report")
      code, body = request.value
      expect(code).to eq("200")
      expect(body).to include("token" => token, "key" => "#{@app_namespace}:report", "finished" => true)
      expect(body["acquire"]).to include("id" => "report", "key" => "#{@app_namespace}:report", "attempts" => 1)
      wait_for(message: "the request to release the lock") { MegaMutex.get_current_lock("report").nil? }
    ensure
      server.get("/finish?id=report") if request&.alive?
      request&.join(5)
    end

    it "logs one line per lock to Rails.logger" do
      request = Thread.new { server.get_json("/hold?id=logged") }
      wait_for(within: 10, message: "the lock") { MegaMutex.get_current_lock("logged") }
      server.get("/finish?id=logged")
      _, body = request.value
      key = Regexp.escape("#{@app_namespace}:logged")
      token = Regexp.escape(body["token"])
      log = wait_for(message: "the release in the Rails log") { server.log.then { |l| l if l.match?(/released #{key}/) } }
      expect(log).to match(/MegaMutex: released #{key} \(lock_id: #{token}\), held [\d.]+ ms after waiting [\d.]+ ms \(1 attempt\)/)
      expect(log.scan(/MegaMutex: .*#{key}/).size).to eq(1)
    ensure
      request&.join(5)
    end

    it "serialises two concurrent requests for the same id" do
      key = Regexp.escape("#{@app_namespace}:serial")
      first = Thread.new { server.get_json("/hold?id=serial") }
      token_a = wait_for(within: 10, message: "the first request to hold the lock") { MegaMutex.get_current_lock("serial") }
      second = Thread.new { server.get_json("/hold?id=serial") }
      # The second request is trying while the first holds the lock (its
      # attempts show in memcached's gets)...
      gets_before = memcached.stats["cmd_get"].to_i
      wait_for(within: 10, message: "the second request to try") { memcached.stats["cmd_get"].to_i > gets_before + 2 }
      expect(MegaMutex.get_current_lock("serial")).to eq(token_a)

      # ...and gets it only once the first has let it go.
      server.get("/finish?id=serial")
      expect(first.value.last).to include("token" => token_a)
      token_b = wait_for(within: 10, message: "the second request to take over") do
        MegaMutex.get_current_lock("serial").then { |t| t if t && t != token_a }
      end
      server.get("/finish?id=serial")
      code, body_b = second.value
      expect(code).to eq("200")
      expect(body_b["token"]).to eq(token_b)

      # The first released before the second, which had waited, trying more than once.
      log = wait_for(message: "both releases in the Rails log") { server.log.then { |l| l if l.scan(/released #{key} /).size == 2 } }
      a_released = log_index(log, /released #{key} \(lock_id: #{Regexp.escape(token_a)}\)/)
      b_released = log_index(log, /released #{key} \(lock_id: #{Regexp.escape(token_b)}\)/)
      expect(a_released).to be < b_released
      expect(log.lines[b_released][/\((\d+) attempts?\)/, 1].to_i).to be > 1
    ensure
      2.times { server.get("/finish?id=serial") } if [first, second].any? { |t| t&.alive? }
      [first, second].each { |t| t&.join(5) }
    end
  end

  describe "configured with MegaMutex.configure in config/initializers as well" do
    serve_with_memcached(lambda {
      { "MM_CONFIG" => "1", "MM_INITIALIZER" => "1", "MM_SERVERS" => memcached.address,
        "MM_NAMESPACE" => "from_config", "MM_INITIALIZER_NAMESPACE" => @app_namespace }
    })

    it "runs the initializer after the railtie: its settings win, the others stay, Rails.logger stays" do
      _, settings = server.get_json("/config")
      expect(settings).to include("namespace" => @app_namespace, "lock_ttl" => 9, # from the initializer
                                  "backoff_max" => 0.02,                          # from config.mega_mutex
                                  "logger_is_rails_logger" => true)
    end

    it "takes its locks under the initializer's namespace" do
      request = Thread.new { server.get_json("/hold?id=init") }
      token = wait_for(within: 10, message: "the request to take the lock") { MegaMutex.get_current_lock("init") }
      expect(memcached.get("#{@app_namespace}:init")).to eq(token)
      expect(memcached.get("from_config:init")).to be_nil
      server.get("/finish?id=init")
      expect(request.value.last).to include("token" => token, "key" => "#{@app_namespace}:init")
    ensure
      server.get("/finish?id=init") if request&.alive?
      request&.join(5)
    end
  end

  describe "booting" do
    it "works with the initializer alone, the logger defaulting to Rails.logger" do
      out, err, status = boot({ "MM_INITIALIZER" => "1", "MM_INITIALIZER_NAMESPACE" => "only_init" },
                              "c = MegaMutex.configuration; " \
                              "MegaMutex.with_distributed_mutex('boot') { print c.namespace, ' ', c.logger.equal?(Rails.logger), ' ', MegaMutex.get_current_lock('boot').nil? }")
      expect(status).to be_success, err
      expect(out).to eq("only_init true false")
    end

    it "keeps config.mega_mutex.logger when set (nil silences MegaMutex)" do
      out, err, status = boot({ "MM_SETTINGS_JSON" => '{"logger": null, "namespace": "quiet"}' },
                              "print MegaMutex.configuration.logger.inspect, ' ', MegaMutex.configuration.namespace")
      expect(status).to be_success, err
      expect(out).to eq("nil quiet")
    end

    {
      '{"lock_ttl": 0}' => /config\.mega_mutex\.lock_ttl: lock_ttl must be .*\(ArgumentError\)/,
      '{"memcache_servers": ["mc1:99999"]}' => /config\.mega_mutex\.memcache_servers: .*port 99999 .*\(ArgumentError\)/,
      '{"tiemout": 1}' => /config\.mega_mutex: unknown setting\(s\) :tiemout .*\(ArgumentError\)/,
      '{"backoff_min": 1, "backoff_max": 0.5}' => /config\.mega_mutex: backoff_min \(1\.0\) must not exceed .*\(ArgumentError\)/
    }.each do |json, message|
      it "fails with ArgumentError naming the setting for config.mega_mutex #{json}" do
        _, err, status = boot({ "MM_SETTINGS_JSON" => json })
        expect(status).not_to be_success
        expect(err).to match(message)
      end
    end
  end
end
