# frozen_string_literal: true

require "spec_helper"
require "rails/railtie"
require "mega_mutex/railtie"
require "active_record"

# In Rails, backend :mysql without a URL uses the application's own database
# settings (config/database.yml's primary database, when it is MySQL).
RSpec.describe "MegaMutex::Railtie and backend :mysql" do
  let(:railtie) { MegaMutex::Railtie }

  it "finds the primary MySQL database of the environment (single and multi-database files), read as its adapter reads it" do
    single = { "production" => { "adapter" => "mysql2", "host" => "db", "username" => "app", "password" => "pw", "pool" => 5 } }
    multi = { "production" => { "primary" => { "adapter" => "trilogy", "host" => "p" }, "cache" => { "adapter" => "sqlite3" } } }
    expect(railtie.mysql_database_settings(single, "production")).to eq(host: "db", username: "app", password: "pw")
    expect(railtie.mysql_database_settings(multi, "production")).to eq(host: "p")
    expect(railtie.mysql_database_settings({ "production" => { "adapter" => "postgresql" } }, "production")).to be_nil
    expect(railtie.mysql_database_settings(nil, "production")).to be_nil
    # mysql2: a remote host is TCP, its socket ignored; trilogy: the socket wins, "localhost" is TCP.
    expect(railtie.mysql_database_settings({ "production" => { "adapter" => "mysql2", "host" => "db", "socket" => "/s" } }, "production"))
      .to eq(host: "db")
    expect(railtie.mysql_database_settings({ "production" => { "adapter" => "trilogy", "host" => "db", "socket" => "/s" } }, "production"))
      .to eq(socket: "/s")
    expect(railtie.mysql_database_settings({ "production" => { "adapter" => "trilogy", "host" => "localhost" } }, "production"))
      .to eq(host: "127.0.0.1")
  end

  it "resolves a url and DATABASE_URL as ActiveRecord does" do
    url_entry = { "production" => { "url" => "mysql2://app:pw@dbhost:3307/appdb?encoding=utf8mb4&pool=5" } }
    expect(railtie.mysql_database_settings(url_entry, "production"))
      .to eq(host: "dbhost", port: 3307, username: "app", password: "pw", database: "appdb")
    saved = ENV.to_h.slice("DATABASE_URL", "RAILS_ENV")
    begin
      ENV["RAILS_ENV"] = "production"
      ENV["DATABASE_URL"] = "trilogy://u@urlhost:3308/x"
      yml = { "production" => { "adapter" => "mysql2", "host" => "yml-host", "database" => "y" } }
      expect(railtie.mysql_database_settings(yml, "production")).to include(host: "urlhost", port: 3308, database: "x")
      # No config/database.yml (Rails reads {}): DATABASE_URL alone.
      expect(railtie.mysql_database_settings({}, "production")).to eq(host: "urlhost", port: 3308, username: "u", database: "x")
    ensure
      %w[DATABASE_URL RAILS_ENV].each { |k| saved.key?(k) ? ENV[k] = saved[k] : ENV.delete(k) }
    end
  end

  it "reads database.yml itself when ActiveRecord is not loaded" do
    script = <<~RUBY
      require "rails/railtie"
      require "mega_mutex/railtie"
      all = { "production" => { "primary" => { "adapter" => "trilogy", "host" => "localhost", "port" => 3307 }, "cache" => { "adapter" => "sqlite3" } } }
      p [defined?(ActiveRecord), MegaMutex::Railtie.mysql_database_settings(all, "production"),
         MegaMutex::Railtie.mysql_database_settings({ "production" => { "adapter" => "postgresql" } }, "production")]
    RUBY
    out, err, status = Open3.capture3(RbConfig.ruby, "-I", File.join(SpecHelpers::ROOT, "lib"), "-e", script)
    expect(status).to be_success, err
    expect(out.strip).to eq('[nil, {:host=>"127.0.0.1", :port=>3307}, nil]')
  end

  it "configures backend :mysql from the database settings when no URL is given, and a URL wins over them" do
    skip "mariadbd is not installed" unless Servers::MariaDB.available?
    db = Servers::MariaDB.shared
    settings = { "adapter" => "mysql2", "host" => "127.0.0.1", "port" => db.port, "username" => "root" }
    allow(railtie).to receive(:mysql_database_settings).and_return(settings)
    config = railtie.apply({ backend: :mysql, namespace: @namespace }, logger: nil)
    expect(config.mysql_settings.to_h).to include(host: "127.0.0.1", port: db.port, username: "root")
    expect(MegaMutex.with_distributed_mutex("from-rails") { MegaMutex.get_current_lock("from-rails") }).to match(/:#{Process.pid}:/)

    config = railtie.apply({ backend: :mysql, mysql_url: "mysql://other@elsewhere:3307" }, logger: nil)
    expect(config.mysql_settings.to_h).to include(host: "elsewhere", port: 3307)
  end

  it "says what is missing when the application's database is not MySQL and no URL is given" do
    allow(railtie).to receive(:mysql_database_settings).and_return(nil)
    expect { railtie.apply({ backend: :mysql }, logger: nil) }.to raise_error(ArgumentError, /config.mega_mutex: .*mysql_url/)
  end
end
