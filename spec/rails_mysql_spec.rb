# frozen_string_literal: true

require "spec_helper"
require_relative "support/rails_server"

# The fixture Rails application (spec/fixtures/rails_app) on MariaDB: it loads
# ActiveRecord with config/database.yml's primary database on the suite's
# MariaDB through trilogy, and sets config.mega_mutex.backend = :mysql without
# a URL, so that MegaMutex::Railtie takes ActiveRecord's settings. Locks are
# taken through HTTP requests and looked at in the server.
rails_mysql_skip =
  if ENV["MEGA_MUTEX_UNDER_VALGRIND"]
    "left out under valgrind: the app takes its locks in puma child processes, which bin/valgrind does not follow " \
      "(--trace-children=no), so the run would check nothing more, only slowly"
  elsif !Servers::MariaDB.available?
    "mariadbd (and the mariadb client) are not installed: apt-get install mariadb-server mariadb-client"
  end

RSpec.describe "Rails on MariaDB (backend :mysql from ActiveRecord's database)", skip: rails_mysql_skip do
  include RailsServer::Helpers

  # The app's database in the suite's MariaDB, and its lock namespace.
  before(:all) do
    @db = Servers::MariaDB.shared
    @db_name = "mm_rails_#{SecureRandom.hex(4)}"
    @db.sql("CREATE DATABASE #{@db_name}")
    @app_namespace = "rails#{SecureRandom.hex(4)}"
  end

  after(:all) do
    @db&.sql("DROP DATABASE IF EXISTS #{@db_name}") if @db_name
  end

  # Looks at MariaDB with the app's namespace, through a URL of its own.
  before do
    url = @db.url
    ns = @app_namespace
    MegaMutex.configure do |c|
      c.backend = :mysql
      c.mysql_url = url
      c.namespace = ns
    end
  end

  let(:db) { @db }

  # The name MariaDB knows the lock `id` by, in the app's namespace.
  def lock_name(id)
    MegaMutex::Native::Client._mysql_lock_name(MegaMutex::Key.for(@app_namespace, id))
  end

  # The connection id holding `id`'s lock, read from a separate connection (the mariadb client).
  def holder_id(id)
    db.lock_holder(lock_name(id))
  end

  # The session ids that hold `name`, as metadata_lock_info lists them.
  def metadata_lock_holders(name)
    db.sql("SELECT THREAD_ID FROM information_schema.METADATA_LOCK_INFO " \
           "WHERE LOCK_TYPE = 'User lock' AND TABLE_SCHEMA = '#{name.gsub("'", "''")}'").flatten.map { |id| Integer(id) }
  end

  # The sessions blocked in GET_LOCK on `name`.
  def waiting_sessions(name)
    db.sessions.select { |_id, _command, info| info.include?("GET_LOCK") && info.include?(name) }.map { |id, *| Integer(id) }
  end

  # An app environment on this database; `where` is how trilogy reaches it.
  def self.app_env(where)
    lambda {
      reach = where == :socket ? { "MM_DB_SOCKET" => @db.socket_path } : { "MM_DB_HOST" => "127.0.0.1", "MM_DB_PORT" => @db.port.to_s }
      { "MM_DATABASE" => "mysql", "MM_DB_NAME" => @db_name, "MM_NAMESPACE" => @app_namespace,
        "MEGA_MUTEX_MYSQL_URL" => nil, **reach }
    }
  end

  describe "over TCP" do
    serve(app_env(:tcp))

    it "configures backend :mysql from config/database.yml's primary database (no URL), Rails.logger as the logger" do
      code, settings = server.get_json("/config")
      expect(code).to eq("200")
      expect(settings).to include("backend" => "mysql", "mysql_url" => nil, "namespace" => @app_namespace,
                                  "mysql_settings" => "#<MysqlSettings root@127.0.0.1:#{db.port}/#{@db_name}>",
                                  "logger_is_rails_logger" => true)
    end

    it "takes a MariaDB named lock on a session of its own (not the request's ActiveRecord connection) and releases it at the end of the request" do
      request = Thread.new { server.get_json("/hold?id=report") }
      holder = wait_for(within: 10, message: "the request to take the lock") { holder_id("report") }
      # The server's own view: IS_USED_LOCK and the metadata lock list agree.
      expect(metadata_lock_holders(lock_name("report"))).to eq([holder])
      token = MegaMutex.get_current_lock("report")
      expect(token).to match(/:#{server.pid}:/) # the puma process holds it

      # Nobody else takes it meanwhile: this process, or another request.
      expect(MegaMutex::Lock.new("report").try_lock).to be(false)
      code, conflict = server.get_json("/hold?id=report&timeout=0")
      expect(code).to eq("409")
      expect(conflict).to include("error" => "MegaMutex::TimeoutError", "holder" => token)

      server.get("/finish?id=report")
      code, body = request.value
      expect(code).to eq("200")
      expect(body).to include("token" => token, "key" => "#{@app_namespace}:report", "finished" => true)
      # The request's ActiveRecord connection saw the lock held by another session.
      expect(body["active_record"]).to include("is_used_lock" => holder)
      expect(body["active_record"]["connection_id"]).to be_a(Integer)
      expect(body["active_record"]["connection_id"]).not_to eq(holder)
      # Released when the request ended (not when a pooled connection is closed).
      expect(holder_id("report")).to be_nil
      expect(MegaMutex.get_current_lock("report")).to be_nil
    ensure
      server.get("/finish?id=report") if request&.alive?
      request&.join(5)
    end

    it "logs MegaMutex's line to the Rails log" do
      request = Thread.new { server.get_json("/hold?id=logged") }
      wait_for(within: 10, message: "the lock") { holder_id("logged") }
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

    it "serialises two concurrent requests for the same id: the second waits in the server's GET_LOCK" do
      name = lock_name("serial")
      key = Regexp.escape("#{@app_namespace}:serial")
      first = Thread.new { server.get_json("/hold?id=serial") }
      holder_a = wait_for(within: 10, message: "the first request to hold the lock") { holder_id("serial") }
      token_a = MegaMutex.get_current_lock("serial")
      second = Thread.new { server.get_json("/hold?id=serial") }
      waiter = wait_for(within: 10, message: "the second request to wait in GET_LOCK") { waiting_sessions(name).first }
      expect(waiter).not_to eq(holder_a)
      expect(holder_id("serial")).to eq(holder_a)

      # The second gets it only once the first has let it go, on its own session.
      server.get("/finish?id=serial")
      code_a, body_a = first.value
      expect([code_a, body_a["token"]]).to eq(["200", token_a])
      holder_b = wait_for(within: 10, message: "the second request to take over") do
        holder_id("serial").then { |id| id if id && id != holder_a }
      end
      expect(holder_b).to eq(waiter)
      token_b = MegaMutex.get_current_lock("serial")
      expect(token_b).not_to eq(token_a)
      server.get("/finish?id=serial")
      code_b, body_b = second.value
      expect(code_b).to eq("200")
      expect(body_b["token"]).to eq(token_b)
      expect(body_b["active_record"]).to include("is_used_lock" => holder_b)
      expect(holder_id("serial")).to be_nil

      log = wait_for(message: "both releases in the Rails log") { server.log.then { |l| l if l.scan(/released #{key} /).size == 2 } }
      a_released = log_index(log, /released #{key} \(lock_id: #{Regexp.escape(token_a)}\)/)
      b_released = log_index(log, /released #{key} \(lock_id: #{Regexp.escape(token_b)}\)/)
      expect(a_released).to be < b_released
    ensure
      2.times { server.get("/finish?id=serial") } if [first, second].any? { |t| t&.alive? }
      [first, second].each { |t| t&.join(5) }
    end
  end

  describe "through the unix socket" do
    serve(app_env(:socket))

    it "takes the socket from config/database.yml and locks there" do
      _, settings = server.get_json("/config")
      expect(settings).to include("backend" => "mysql", "mysql_settings" => "#<MysqlSettings root@#{db.socket_path}/#{@db_name}>")
      request = Thread.new { server.get_json("/hold?id=sock") }
      holder = wait_for(within: 10, message: "the request to take the lock") { holder_id("sock") }
      server.get("/finish?id=sock")
      _, body = request.value
      expect(body["active_record"]).to include("is_used_lock" => holder)
      expect(body["active_record"]["connection_id"]).not_to eq(holder)
      expect(holder_id("sock")).to be_nil
    ensure
      server.get("/finish?id=sock") if request&.alive?
      request&.join(5)
    end
  end

  describe "booting" do
    # Boots the app without a server; returns [stdout, stderr, status].
    def boot(env, script)
      full = { "RAILS_ENV" => "production", "MM_DATABASE" => "mysql", "MM_DB_NAME" => @db_name,
               "MM_NAMESPACE" => @app_namespace, "MEGA_MUTEX_MYSQL_URL" => nil, "DATABASE_URL" => nil }.merge(env)
      Open3.capture3(full, RbConfig.ruby, "-e", "require './config/environment'; #{script}", chdir: app_root)
    end

    let(:show) do
      "ar = ActiveRecord::Base.connection_db_config.configuration_hash; " \
      "print MegaMutex.configuration.mysql_settings.inspect, ' ', ar[:port], ' ', " \
      "MegaMutex.with_distributed_mutex('boot') { MegaMutex.get_current_lock('boot') }.split(':')[1] == Process.pid.to_s"
    end

    it "follows DATABASE_URL over database.yml, as ActiveRecord does" do
      out, err, status = boot({ "MM_DB_HOST" => "127.0.0.1", "MM_DB_PORT" => "1", # nothing listens on port 1
                                "DATABASE_URL" => "trilogy://root@127.0.0.1:#{db.port}/#{@db_name}" }, show)
      expect(status).to be_success, err
      expect(out).to eq("#<MysqlSettings root@127.0.0.1:#{db.port}/#{@db_name}> #{db.port} true")
    end

    it "lets config.mega_mutex.mysql_url win over the database" do
      json = JSON.generate("mysql_url" => db.socket_url)
      out, err, status = boot({ "MM_DB_HOST" => "127.0.0.1", "MM_DB_PORT" => db.port.to_s, "MM_SETTINGS_JSON" => json }, show)
      expect(status).to be_success, err
      expect(out).to eq("#<MysqlSettings root@#{db.socket_path}> #{db.port} true")
    end
  end
end
